"""The cold start: SFT on demonstrations and token-level forward-KL distillation (DGPO paper §3).

``DistillTrainer`` subclasses ``transformers.Trainer`` rather than TRL's ``SFTTrainer``: SFTTrainer
re-prepares datasets (adds EOS, truncates, folds masks) and patches the model's forward with a fused
LM head that never materialises logits, while KD needs the full student logits next to a frozen
teacher's. With the plain Trainer, examples arrive exactly as ``training.data`` built them (mask
from segment roles, retrieved tokens never targets), ``compute_loss`` is the only override, and
accelerate still handles devices, mixed precision and distribution.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel as unwrap_model
from transformers import PreTrainedModel, Trainer, TrainingArguments

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.data import CompletionCollator


@dataclass
class DistillConfig(TrainingArguments):
    """Trainer settings plus the loss mix: ``ce_weight``·CE + ``kd_lambda``·FKL.

    Unset weights follow the mode: with a teacher, ``kd_lambda`` = 1 and ``ce_weight`` = 0 (TAID's
    pure soft-target FKL, the paper's KD row); ``kd_lambda`` = 0 turns KD into plain CE (SFT/SeqKD);
    without a teacher the loss is CE alone. ``temperature`` softens both distributions (no τ² factor,
    as in TRL's GKD).
    """

    kd_lambda: float | None = field(default=None, metadata={"help": "weight of forward KL to the teacher (default 1 with a teacher)"})
    ce_weight: float | None = field(default=None, metadata={"help": "weight of cross-entropy on the targets (default 0 when distilling, else 1)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature of the KL term"})
    # The collator needs completion_mask, which is no model input.
    remove_unused_columns: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise DGPOError(f"temperature must be positive (got {self.temperature})")
        for name in ("kd_lambda", "ce_weight"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise DGPOError(f"{name} must be non-negative (got {value})")

    def loss_weights(self, has_teacher: bool) -> tuple[float, float]:
        """(ce_weight, kd_lambda) with the mode's defaults filled in."""
        kd = self.kd_lambda if self.kd_lambda is not None else float(has_teacher)
        if kd and not has_teacher:
            raise DGPOError(f"kd_lambda={kd} needs a teacher: pass teacher_model or set kd_lambda=0")
        ce = self.ce_weight if self.ce_weight is not None else float(kd == 0)
        if ce == 0 and kd == 0:
            raise DGPOError("ce_weight and kd_lambda are both 0: set at least one of them above 0")
        return ce, kd


class LossTerms(NamedTuple):
    """Token means over the target positions; ``kd`` is None without teacher logits."""

    ce: torch.Tensor
    kd: torch.Tensor | None
    tokens: torch.Tensor


def loss_terms(
    logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> LossTerms:
    """Cross-entropy and forward KL Σ_v p_T(v)(log p_T(v) − log p_S(v)), averaged over target positions.

    ``logits`` (B, T, V) are a causal LM's outputs, unshifted, and ``labels`` (B, T) its inputs with
    -100 on every non-target token: position t predicts label t+1. Only target positions are gathered,
    so logits elsewhere get exactly zero gradient.
    """
    keep = target_positions(labels)
    teacher = teacher_logits[keep] if teacher_logits is not None else None
    return target_loss_terms(logits[keep], labels[:, 1:][keep[:, :-1]], teacher, temperature)


def target_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: the positions whose logits predict a target (the next label is not -100)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100
    return keep


def target_loss_terms(
    student: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | None = None, temperature: float = 1.0
) -> LossTerms:
    """``loss_terms`` on logits already gathered at the N target positions: (N, V) and targets (N,)."""
    tokens = torch.tensor(targets.numel(), device=student.device)
    logp = F.log_softmax(student.float(), dim=-1)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).sum() / tokens.clamp(min=1)
    if teacher is None:
        return LossTerms(ce, None, tokens)
    logp_s = logp if temperature == 1 else F.log_softmax(student.float() / temperature, dim=-1)
    logp_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    kd = F.kl_div(logp_s, logp_t, log_target=True, reduction="sum") / tokens.clamp(min=1)
    return LossTerms(ce, kd, tokens)


@contextmanager
def head_at(keep: torch.Tensor, *models: torch.nn.Module | None) -> Iterator[None]:
    """Run the models' LM heads only at ``keep`` positions, so their forwards return (N, V) logits.

    Most of a trajectory is prompt and retrieved text, and the vocabulary projection (with its
    softmax) dominates a small model's step, so projecting only the target positions makes a KD step
    much faster. A pre-hook on the head, rather than calling the decoder directly, keeps the
    forward going through the (possibly DDP-wrapped) model.
    """
    handles = [
        unwrap_model(model).get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0][keep], *args[1:]))
        for model in models
        if model is not None
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def output_rows(model: PreTrainedModel) -> int:
    """How many logits the model emits per position (its vocabulary, possibly padded)."""
    return model.get_output_embeddings().weight.shape[0]


def check_vocab(tokenizer: Any, student: PreTrainedModel, teacher: PreTrainedModel | None, teacher_tokenizer: Any | None = None) -> int:
    """The shared vocabulary size ``len(tokenizer)``; raises when the models cannot share it.

    Embeddings may be padded past the tokenizer (Qwen2.5 pads by size), so each model only needs at
    least ``len(tokenizer)`` rows; logits are sliced to that. A teacher tokenizer, when given, must map
    every token to the same id.
    """
    vocab = len(tokenizer)
    if output_rows(student) < vocab:
        raise DGPOError(
            f"the model emits {output_rows(student)} logits but the tokenizer has {vocab} tokens: pass the tokenizer the model was trained with"
        )
    if teacher_tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise _vocab_mismatch(len(teacher_tokenizer), vocab)
    if teacher is not None and output_rows(teacher) < vocab:
        raise _vocab_mismatch(output_rows(teacher), vocab)
    return vocab


def _vocab_mismatch(teacher: int, student: int) -> DGPOError:
    return DGPOError(f"teacher and student vocabularies differ ({teacher} vs {student}): distil between models that share a tokenizer")


class DistillTrainer(Trainer):
    """SFT (no teacher) or forward-KL KD from a frozen teacher on completion-masked examples.

    The teacher runs in eval mode under ``no_grad`` on the same batch. Each micro-batch's loss is
    its token mean, so gradient accumulation averages micro-batches (as TRL's GKD does). The CE and
    KD terms are logged separately as ``ce`` and ``kd``.
    """

    # compute_loss returns a per-micro-batch mean: the Trainer divides it by the accumulation steps.
    loss_is_scaled_for_ga = False

    def __init__(
        self,
        model: PreTrainedModel,
        args: DistillConfig,
        processing_class: Any,
        teacher_model: PreTrainedModel | None = None,
        teacher_tokenizer: Any | None = None,
        data_collator: Any | None = None,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = check_vocab(processing_class, model, teacher_model, teacher_tokenizer)
        self.ce_weight, self.kd_lambda = args.loss_weights(teacher_model is not None)
        super().__init__(
            model=model,
            args=args,
            processing_class=processing_class,
            data_collator=data_collator or CompletionCollator.for_tokenizer(processing_class),
            **kwargs,
        )
        self.teacher_model = None
        if teacher_model is not None and self.kd_lambda:
            self.teacher_model = self.accelerator.prepare_model(teacher_model, evaluation_mode=True)
            self.teacher_model.eval()
        self._loss_logs: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
        keep = target_positions(inputs["labels"])
        with head_at(keep, model, self.teacher_model):
            outputs = model(**batch)
            teacher_logits = None
            if self.teacher_model is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher_model(**batch).logits[..., : self.vocab_size]
        targets = inputs["labels"][:, 1:][keep[:, :-1]]
        terms = target_loss_terms(outputs.logits[..., : self.vocab_size], targets, teacher_logits, self.args.temperature)
        loss = self.ce_weight * terms.ce + (self.kd_lambda * terms.kd if terms.kd is not None else 0.0)
        logs = self._loss_logs["train" if model.training else "eval"]
        logs["ce"].append(terms.ce.item())
        if terms.kd is not None:
            logs["kd"].append(terms.kd.item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{k}": sum(v) / len(v) for k, v in self._loss_logs[mode].items() if v})
        self._loss_logs[mode].clear()
        super().log(logs, start_time)


def train_sft(model: PreTrainedModel, tokenizer: Any, dataset: Any, config: DistillConfig) -> dict[str, float]:
    """Supervised fine-tuning on completion-masked examples: the teacher on oracle demonstrations, or
    the SeqKD baseline on teacher trajectories. Returns the Trainer's metrics."""
    trainer = DistillTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=dataset)
    return trainer.train().metrics


def train_kd(
    student: PreTrainedModel, teacher: PreTrainedModel, tokenizer: Any, dataset: Any, config: DistillConfig
) -> dict[str, float]:
    """Forward-KL distillation of ``student`` towards ``teacher`` on completion-masked examples."""
    trainer = DistillTrainer(model=student, args=config, processing_class=tokenizer, teacher_model=teacher, train_dataset=dataset)
    return trainer.train().metrics
