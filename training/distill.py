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
    micro_batch_size: int | None = field(
        default=None, metadata={"help": "forward each batch in length-sorted chunks of this many rows (default: the whole batch)"}
    )
    teacher_top_k: int | None = field(
        default=None,
        metadata={"help": "distil from a table of the teacher's k likeliest tokens, built in one pass before training (default: the teacher's forward every step)"},
    )
    # The collator needs completion_mask, which is no model input.
    remove_unused_columns: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise DGPOError(f"temperature must be positive (got {self.temperature})")
        for name in ("micro_batch_size", "teacher_top_k"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise DGPOError(f"{name} must be at least 1 (got {value})")
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


class TopK(NamedTuple):
    """The teacher at N target positions, as its k likeliest tokens: ``ids`` (N, k) and their
    log-probabilities ``logp`` (N, k) at the KD temperature; the rest of its mass is one outcome."""

    ids: torch.Tensor
    logp: torch.Tensor


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
    student: torch.Tensor, targets: torch.Tensor, teacher: torch.Tensor | TopK | None = None, temperature: float = 1.0
) -> LossTerms:
    """``loss_terms`` on logits already gathered at the N target positions: (N, V) and targets (N,);
    the teacher as logits (N, V) or as its table's ``TopK`` rows."""
    tokens = torch.tensor(targets.numel(), device=student.device)
    logp = log_probs(student)
    ce = -logp.gather(-1, targets.unsqueeze(-1)).sum() / tokens.clamp(min=1)
    if teacher is None:
        return LossTerms(ce, None, tokens)
    logp_s = logp if temperature == 1 else log_probs(student, temperature)
    if isinstance(teacher, TopK):
        kd = top_k_kl(logp_s, teacher).sum() / tokens.clamp(min=1)
    else:
        logp_t = log_probs(teacher, temperature)
        kd = F.kl_div(logp_s, logp_t, log_target=True, reduction="sum") / tokens.clamp(min=1)
    return LossTerms(ce, kd, tokens)


def at_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits`` in float32 divided by ``temperature``; at 1 without the division, which would only
    write another (N, V) tensor."""
    logits = logits.float()
    return logits if temperature == 1 else logits / temperature


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-softmax over the last dimension at ``temperature``, in float32."""
    return F.log_softmax(at_temperature(logits, temperature), dim=-1)


def top_k_kl(logp_s: torch.Tensor, teacher: TopK) -> torch.Tensor:
    """(N,) forward KL between teacher and student over k + 1 outcomes: the teacher's k likeliest
    tokens, and everything else as one. It equals the full KL when the teacher's mass outside its k
    is 0, and is never more than the full KL; the student is pulled toward the teacher's k tokens
    and toward the teacher's total mass on the rest."""
    logp_k = logp_s.gather(-1, teacher.ids)
    p_t = teacher.logp.exp()
    rest_t = (1 - p_t.sum(-1)).clamp(min=0)
    rest_s = (1 - logp_k.exp().sum(-1)).clamp(min=1e-12)
    return (p_t * (teacher.logp - logp_k)).sum(-1) + torch.xlogy(rest_t, rest_t) - rest_t * rest_s.log()


@torch.no_grad()
def teacher_table(
    teacher: PreTrainedModel, dataset: Any, collator: Any, vocab_size: int, k: int, temperature: float = 1.0, batch_size: int = 16
) -> list[TopK]:
    """The teacher's ``TopK`` at every target position of every example, in one pass.

    The teacher is frozen and the examples are fixed, so its forward in every KD step repeats one
    of these; reading them from the table leaves a step the student's forward and backward only.
    Examples go through in length order, so the pass pads little.
    """
    device = next(teacher.parameters()).device
    lengths = [len(ids) for ids in dataset["input_ids"]]
    order = sorted(range(len(dataset)), key=lengths.__getitem__)
    table: list[TopK] = [TopK(torch.empty(0), torch.empty(0))] * len(dataset)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = collator([dataset[i] for i in rows])
        keep = target_positions(batch["labels"])
        with head_at(keep.to(device), teacher):
            logits = teacher(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
        top = log_probs(logits[..., :vocab_size], temperature).topk(min(k, vocab_size), dim=-1)
        counts = keep.sum(1).tolist()
        for i, ids, logp in zip(rows, top.indices.cpu().split(counts), top.values.cpu().split(counts), strict=True):
            table[i] = TopK(ids, logp)
    return table


def _joined(parts: tuple[torch.Tensor | TopK | None, ...]) -> torch.Tensor | TopK | None:
    """The teacher's rows of each chunk as one: logits or ``TopK`` concatenated (None without one)."""
    if parts[0] is None:
        return None
    if isinstance(parts[0], TopK):
        return TopK(*(torch.cat(field) for field in zip(*parts, strict=True)))
    return torch.cat(parts)


def length_chunks(inputs: dict[str, torch.Tensor], size: int | None) -> list[dict[str, torch.Tensor]]:
    """A right-padded batch as chunks of ``size`` rows of similar length, each cut to its own longest
    row (the whole batch when ``size`` is None).

    A batch stays the random draw it was, so every optimiser step still mixes kinds of example (a
    length-grouped sampler, which makes batches of one kind, taught the cold start far less); only
    the padding goes, and with it much of a step's compute. Causal attention never looks right, so
    cutting trailing padding leaves every real position's logits as they were.
    """
    lengths = inputs["attention_mask"].sum(1)
    if size is None or size >= len(lengths):
        return [inputs]
    chunks = []
    for rows in lengths.argsort(stable=True).split(size):
        width = int(lengths[rows].max())
        chunks.append({key: value[rows, :width] if value.dim() > 1 else value[rows] for key, value in inputs.items()})
    return chunks


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

    The teacher runs in eval mode under ``no_grad`` on the same batch, or, with ``teacher_top_k``,
    once over the training examples before the first step (``teacher_table``). A batch's loss is its
    token mean whatever ``micro_batch_size`` chunks it into; gradient accumulation averages batches
    (as TRL's GKD does). The CE and KD terms are logged separately as ``ce`` and ``kd``.
    """

    # compute_loss returns each batch's token mean: the Trainer divides it by the accumulation steps.
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
        tabled = teacher_model is not None and bool(self.kd_lambda) and args.teacher_top_k is not None
        if tabled:
            dataset = kwargs.get("train_dataset")
            if dataset is None:
                raise DGPOError("teacher_top_k tables the teacher on the training examples: pass train_dataset")
            kwargs["train_dataset"] = dataset.add_column("example", list(range(len(dataset))))
        super().__init__(
            model=model,
            args=args,
            processing_class=processing_class,
            data_collator=data_collator or CompletionCollator.for_tokenizer(processing_class),
            **kwargs,
        )
        self.teacher_model = None
        self.teacher_table: list[TopK] | None = None
        if teacher_model is not None and self.kd_lambda:
            teacher = self.accelerator.prepare_model(teacher_model, evaluation_mode=True).eval()
            if tabled:
                self.teacher_table = teacher_table(
                    teacher, self.train_dataset, self.data_collator, self.vocab_size, args.teacher_top_k, args.temperature
                )
            else:
                self.teacher_model = teacher
        self._loss_logs: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        chunks = length_chunks(inputs, self.args.micro_batch_size)
        student, teacher, targets = zip(*(self._target_logits(model, chunk) for chunk in chunks))
        logits = torch.cat(student)
        terms = target_loss_terms(logits, torch.cat(targets), _joined(teacher), self.args.temperature)
        loss = self.ce_weight * terms.ce + (self.kd_lambda * terms.kd if terms.kd is not None else 0.0)
        logs = self._loss_logs["train" if model.training else "eval"]
        logs["ce"].append(terms.ce.item())
        if terms.kd is not None:
            logs["kd"].append(terms.kd.item())
        return (loss, {"logits": logits}) if return_outputs else loss

    def _target_logits(
        self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor | TopK | None, torch.Tensor]:
        """The student's logits at the batch's N target positions, (N, V), the teacher there (its
        logits, or its table's rows) and the N targets: the LM heads run only there (``head_at``)."""
        batch = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "use_cache": False}
        keep = target_positions(inputs["labels"])
        with head_at(keep, model, self.teacher_model):
            student = model(**batch).logits[..., : self.vocab_size]
            teacher = None
            if self.teacher_model is not None:
                with torch.no_grad():
                    teacher = self.teacher_model(**batch).logits[..., : self.vocab_size]
        if self.teacher_table is not None:
            rows = [self.teacher_table[i] for i in inputs["example"].tolist()]
            teacher = TopK(*(torch.cat(part).to(student.device) for part in zip(*rows, strict=True)))
        return student, teacher, inputs["labels"][:, 1:][keep[:, :-1]]

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
