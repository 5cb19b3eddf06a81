"""Phase 2 of DGPO: reinforcement learning in the agent environment, guided by the teacher (paper §4).

Each step rolls out ``rollout_batch_size`` training questions × ``group_size`` rollouts through the
batched agent graph (``run_batch``: the same step functions as the LangGraph graph, real retrieval,
the environment mask), scores the final answers by exact match, and updates the policy with PPO-clip
and a value model (GAE, γ = λ = 1: the paper's setting) or with GRPO's critic-free group baseline. On
the rollouts ``kl_on`` picks (the wrong ones: DGPO's selective mask) the teacher's term joins as
``guidance`` says (``rl_config.RLConfig``): in the reward, as the reference code does; in each token's
advantage; or as a KL loss. GKD is the teacher's term alone. Without a teacher (or with β = 0) the
same loop is the plain PPO / GRPO baseline.

The reference code's form (β·k1 summed into the return) turns into a length penalty wherever the
task reward is rare: a wrong rollout lowers its penalty by being short. The forms that keep the
teacher's signal on each token cannot be gamed that way. The tiny preset's form and β were chosen on
dev questions, with the comparison of every form over seeds in ``docs/results.md``.

Why accelerate and not TRL's ``GRPOTrainer``: the paper's recipe needs a value model, which
``GRPOTrainer`` cannot host, and TRL's PPO trainer generates single-turn completions itself, with no
room for multi-turn rollouts and an environment mask. A ``GRPOTrainer`` subclass (MiniLLM's per-token
advantages) could only carry the GRPO variant, leaving two trainers with two data paths. One loop
over ``accelerate`` runs both estimators on the same rollouts, objective (``rl_objective``), logging
and checkpoints; ``accelerate launch`` still supplies multi-process DDP (and its FSDP / DeepSpeed
plugins), mixed precision and the checkpoint state.

Run it with ``accelerate launch -m dgpo_agent.training.rl --config rl.yaml`` (see ``main``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import exact_match
from dgpo_agent.rollout import AgentConfig, TokenTrajectory, run_batch, token_trajectory
from dgpo_agent.state import AgentState
from dgpo_agent.training import rl_objective as obj
from dgpo_agent.training.callbacks import METRICS, drop_after
from dgpo_agent.training.rl_config import RLConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = (
    "max_steps", "save_every", "eval_every", "save_total_limit", "output_dir", "stall_kl", "stall_steps", "shift_rollouts", "report_to",
    "rollout_engine", "vllm_gpu_memory_utilization",
)


# ----------------------------------------------------------------------------------- rollout statistics

# The evaluation metrics (``evals.metrics``) each step logs over its rollouts, under the log's names.
# The reward is EM: of the answer the model gave, never of text from the prompt or the documents.
ROLLOUT_METRICS = {"em": "reward", "invalid": "invalid_rate", "searches": "search_count", "empty_query": "empty_query_rate", "answered": "answered"}


def rollout_counts(states: Sequence[AgentState], records: Sequence[dict]) -> dict[str, float]:
    """Per metric of ``ROLLOUT_METRICS``: the sum over the rollouts that define it and their count
    (summable over processes, then divided: the harness's mean over the trajectories that define it)."""
    from dgpo_agent.agent import output
    from dgpo_agent.evals.scoring import score

    counts = {f"{key}_{part}": 0.0 for key in ROLLOUT_METRICS for part in ("sum", "n")}  # the same keys on every process
    for state, record in zip(states, records, strict=True):
        scored = score(output(state), record)
        for key in ROLLOUT_METRICS.keys() & scored.keys():
            counts[f"{key}_sum"] += scored[key]
            counts[f"{key}_n"] += 1
    return counts


@dataclass
class Batch:
    """Rollouts as right-padded (B, L) tensors over prompt + response; ``mask`` marks model tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    mask: torch.Tensor

    def rows(self, index: torch.Tensor) -> Batch:
        return Batch(self.input_ids[index], self.attention_mask[index], self.mask[index])

    def trimmed(self) -> Batch:
        """Cut after the longest row: right padding changes no output of a causal model, only its cost."""
        width = int(self.attention_mask.sum(1).max())
        return Batch(self.input_ids[:, :width], self.attention_mask[:, :width], self.mask[:, :width])


def pack(trajectories: Sequence[TokenTrajectory], pad_id: int, device: Any = "cpu") -> Batch:
    """Token trajectories as a batch: retrieved and corrective text (``env_mask`` = 1) stay in the
    input, so the model conditions on them, but are 0 in ``mask``, so they get no loss and no KL."""
    width = max(len(t.prompt_ids) + len(t.response_ids) for t in trajectories)
    ids, attention, mask = [], [], []
    for t in trajectories:
        row = t.prompt_ids + t.response_ids
        pad = width - len(row)
        ids.append(row + [pad_id] * pad)
        attention.append([1] * len(row) + [0] * pad)
        mask.append([0] * len(t.prompt_ids) + t.loss_mask + [0] * pad)
    return Batch(torch.tensor(ids, device=device), torch.tensor(attention, device=device), torch.tensor(mask, device=device).float())


def value_model(policy: Any) -> Any:
    """A critic initialised from the policy (as veRL does): the policy's backbone with a zero scalar
    head, so it starts at value 0 and keeps the policy's features. No dropout, like the policy."""
    import copy

    from transformers import AutoModelForTokenClassification

    config = copy.deepcopy(policy.config)
    config.num_labels, config.classifier_dropout = 1, 0.0
    critic = AutoModelForTokenClassification.from_config(config)
    getattr(critic, critic.base_model_prefix).load_state_dict(getattr(policy, policy.base_model_prefix).state_dict())
    torch.nn.init.zeros_(critic.score.weight)
    if critic.score.bias is not None:
        torch.nn.init.zeros_(critic.score.bias)
    return critic.to(device=policy.device, dtype=policy.dtype)


# ----------------------------------------------------------------------------------- the trainer


@dataclass
class _Scored:
    """What the no-grad pass over the rollouts yields, per token (B, L): the policy's log-probs and
    entropy under the sampling distribution, the values, and the teacher's log-probs and KL estimate
    on the rollouts that need them (0 elsewhere)."""

    logp: torch.Tensor
    entropy: torch.Tensor
    values: torch.Tensor | None
    kl: torch.Tensor | None
    teacher_logp: torch.Tensor | None
    teacher_s: float


def lr_factor(step: int, warmup_steps: int, max_steps: int, kind: str | None = None) -> float:
    """The share of the learning rate that RL step ``step`` (from 1) trains at: k/W in a linear warm-up
    of W steps, so the first step already moves the policy (transformers' schedules start at 0); then
    1, or under ``cosine`` a half cosine from 1 at the first step after the warm-up towards 0, which
    it would reach one step after ``max_steps``, so no step trains at 0."""
    if step <= warmup_steps:
        return step / warmup_steps
    if kind != "cosine":
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps - 1) / max(1, max_steps - warmup_steps)))


def lr_schedule(optimizer: Any, warmup_steps: int, max_steps: int, kind: str | None = None) -> Any:
    """``optimizer``'s schedule over RL steps (stepped once per RL step), as ``lr_factor`` says."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: lr_factor(done + 1, warmup_steps, max_steps, kind))


class RLTrainer:
    """DGPO, PPO or GRPO over rollouts of ``records`` (question records with ``golden_answers``).

    ``teacher`` None (or ``beta`` 0 or ``kl_on`` none) gives the teacher-free baseline; with a teacher
    its KL is still measured and logged on wrong rollouts. ``critic`` defaults to ``value_model(policy)``
    for PPO. All models stay in eval mode: dropout off, as TRL's ``disable_dropout`` does for RL.
    ``evaluate`` (the policy model → metrics) runs on the main process every ``eval_every`` steps and
    at the end; its metrics join that step's log with a ``dev_`` prefix (the EM curve). ``engine`` (a
    ``RolloutEngine``) generates the rollouts; by default the one ``rollout_engine`` names.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        records: Sequence[dict],
        retriever: Any,
        agent: AgentConfig,
        config: RLConfig,
        teacher: Any | None = None,
        critic: Any | None = None,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        engine: Any | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from dgpo_agent.backends.base import RolloutEngine
        from dgpo_agent.backends.transformers import pad_id
        from dgpo_agent.training.distill import check_vocab

        if not records:
            raise DGPOError("no training questions: pass records with 'question' and 'golden_answers'")
        if missing := [k for k in ("question", "golden_answers") if k not in records[0]]:
            raise DGPOError(f"training records lack {', '.join(missing)}: pass question records such as the world's train.jsonl")
        self.config, self.agent, self.records, self.retriever = config, agent, list(records), retriever
        self.tokenizer = tokenizer
        self.accelerator = acc = Accelerator(
            mixed_precision="bf16" if config.precision == "bf16" else "no",
            log_with=config.report_to or None,
            project_dir=str(Path(config.output_dir) / "tracking") if config.report_to else None,
        )
        set_seed(config.seed)
        self.vocab = check_vocab(tokenizer, model, teacher)
        self.guided = teacher is not None and config.guided
        if config.algorithm == "gkd" and not self.guided:
            raise DGPOError("gkd learns from the teacher alone: pass a teacher")
        if config.uses_critic and critic is None:
            critic = value_model(model)
        if not config.uses_critic:
            critic = None

        def optimizer(module: Any, lr: float, warmup: float) -> tuple[Any, Any]:
            opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=config.weight_decay)
            return opt, lr_schedule(opt, round(warmup * config.max_steps), config.max_steps, config.lr_scheduler_type)

        # Float32 master weights, whatever dtype the models came in: a bf16 weight drops small updates.
        model, critic = model.float(), critic.float() if critic is not None else None
        opt, sched = optimizer(model, config.learning_rate, config.warmup_ratio)
        self.model, self.optimizer = acc.prepare(model.eval(), opt)
        self.schedulers = [sched]
        self.critic = self.critic_optimizer = None
        if critic is not None:
            copt, csched = optimizer(critic, config.critic_learning_rate, config.critic_warmup_ratio)
            self.critic, self.critic_optimizer = acc.prepare(critic.eval(), copt)
            self.schedulers.append(csched)
        # Schedulers step once per RL step; accelerate's scheduler wrapper would step once per process.
        acc.register_for_checkpointing(*self.schedulers)
        # Placed, not prepared: a prepared model would be saved in every checkpoint, and the teacher is frozen.
        self.teacher = teacher.eval().to(acc.device) if teacher is not None else None
        self.engine = engine if engine is not None else self._own_engine(tokenizer)
        if not isinstance(self.engine, RolloutEngine):
            raise DGPOError(f"cannot roll out with a {type(self.engine).__name__}: pass a RolloutEngine (weights_version, load_weights)")
        self.weights_version = 1  # the weights as handed in; an engine that holds another version is synced first
        self.pad_id = pad_id(tokenizer)
        self.run_dir = Path(config.output_dir)
        self.evaluate = evaluate
        self.step = 0
        self.still = 0  # consecutive steps whose update left the policy where it was
        self.level = 0  # consecutive steps whose rollouts all scored the same
        self._order: tuple[int, list[int]] = (-1, [])

    def _own_engine(self, tokenizer: Any) -> Any:
        """The engine ``rollout_engine`` names: the transformers backend over the trained model itself
        (nothing to sync), or a vLLM engine in this process on its GPU, loaded from the policy's
        checkpoint and handed the trained weights before the first rollout."""
        acc, policy = self.accelerator, self.accelerator.unwrap_model(self.model)
        if self.config.rollout_engine != "vllm":
            from dgpo_agent.backends.transformers import TransformersPolicy

            return TransformersPolicy(policy, tokenizer)
        from dgpo_agent.backends.vllm_engine import VLLMPolicy

        if acc.device.type != "cuda":
            raise DGPOError(f"rollout_engine vllm generates on a CUDA GPU and this run is on {acc.device.type}: use rollout_engine transformers")
        if acc.distributed_type.value in ("FSDP", "DEEPSPEED"):
            raise DGPOError(f"rollout_engine vllm copies whole parameters and {acc.distributed_type.value} shards them: launch with DDP or use rollout_engine transformers")
        if not policy.name_or_path:
            raise DGPOError("rollout_engine vllm loads the policy from its checkpoint: pass a model loaded with from_pretrained")
        return VLLMPolicy.colocated(
            policy.name_or_path,
            rank=acc.process_index,
            local_rank=acc.local_process_index,
            world_size=acc.num_processes,
            gpu_memory_utilization=self.config.vllm_gpu_memory_utilization,
            tokenizer=tokenizer,
        )

    # ------------------------------------------------------------------------------ data order

    def _seed(self, *parts: int) -> int:
        """A seed for (step, …) on this process, so sampling and shuffles never depend on history."""
        return int(np.random.SeedSequence([self.config.seed, *parts, self.accelerator.process_index]).generate_state(1)[0])

    def data_position(self, step: int) -> int:
        """Global index of the first prompt of ``step`` in the epoch-by-epoch shuffled stream."""
        return (step - 1) * self.config.prompts_per_step * self.accelerator.num_processes

    def step_records(self, step: int) -> list[dict]:
        """This process's prompts for ``step``, each repeated ``group_size`` times in a row."""
        per = self.config.prompts_per_step
        start = self.data_position(step) + self.accelerator.process_index * per
        picked = []
        for i in range(start, start + per):
            epoch, j = divmod(i, len(self.records))
            picked.append(self.records[self._epoch_order(epoch)[j]])
        return [r for r in picked for _ in range(self.config.group_size)]

    def _epoch_order(self, epoch: int) -> list[int]:
        """The records' shuffled order in ``epoch`` (a function of the seed and the epoch only)."""
        if self._order[0] != epoch:
            order = list(range(len(self.records)))
            random.Random(self.config.seed * 100_003 + epoch).shuffle(order)
            self._order = (epoch, order)
        return self._order[1]

    # ------------------------------------------------------------------------------ one step

    def train_step(self, step: int) -> dict[str, float]:
        """Roll out, score, compute advantages, update; returns the step's logged metrics."""
        cfg, acc = self.config, self.accelerator
        started = time.perf_counter()
        sync_s = self._sync_engine()
        started_rollouts = time.perf_counter()
        records, states, all_scores = self.rollouts(step)
        rollout_s = time.perf_counter() - started_rollouts
        trajectories = [token_trajectory(s) for s in states]
        kept = self._trained_rows(all_scores, step)
        scores = all_scores[kept]
        batch = pack([trajectories[i] for i in kept.tolist()], self.pad_id, acc.device)
        with torch.no_grad():
            scored = self._score(batch, scores)
        advantages, returns, penalised = self._advantages(batch, scores, scored)
        training_policy = step > cfg.critic_warmup_steps
        lr = self.schedulers[0].get_last_lr()[0] if training_policy else 0.0  # what this step's update trains with
        losses = self._update(batch, scored, advantages, returns, penalised, step)
        self.weights_version += int(training_policy)
        # Each schedule counts its own optimizer's steps: the policy's warm-up starts with its first update.
        for scheduler in self.schedulers[int(not training_policy) :]:
            scheduler.step()
        wrong = (scores < cfg.reward_threshold).float()
        counts = rollout_counts(states, records)
        counts.update(
            rollouts=float(len(states)),
            tokens=float(sum(sum(t.loss_mask) for t in trajectories)),
            wrong=(all_scores < cfg.reward_threshold).sum().item(),
            score_sum=all_scores.sum().item(),
            score_sq=(all_scores.float() ** 2).sum().item(),
            trained=float(len(kept)),
            trained_tokens=batch.mask.sum().item(),
            trained_score=scores.sum().item(),
            entropy=(scored.entropy * batch.mask).sum().item(),
            penalised=penalised.sum().item(),
        )
        counts.update(zip(("shift", "shift_tokens"), self._policy_shift(batch, scored.logp, step)))
        if scored.kl is not None:
            wrong_tokens = batch.mask * wrong.unsqueeze(1)
            counts.update(kl_wrong=(scored.kl * wrong_tokens).sum().item(), wrong_tokens=wrong_tokens.sum().item())
        totals = self._sum_over_processes(counts | losses)
        return self._metrics(step, totals, lr, (sync_s, rollout_s, scored.teacher_s, time.perf_counter() - started))

    def _trained_rows(self, scores: torch.Tensor, step: int) -> torch.Tensor:
        """The rollouts the update trains on: all of them, or under ``candidate_prompts`` the
        ``rollout_batch_size`` groups ``rl_objective.informative_groups`` picks."""
        cfg = self.config
        if cfg.prompts_per_step == cfg.rollout_batch_size:
            return torch.arange(scores.numel(), device=scores.device)
        generator = torch.Generator().manual_seed(self._seed(step, 3))
        return obj.informative_groups(scores, cfg.group_size, cfg.rollout_batch_size, cfg.reward_threshold, generator)

    def rollouts(self, step: int) -> tuple[list[dict], list[AgentState], torch.Tensor]:
        """Step ``step``'s prompts, the engine's rollouts of them (sampled with the step's own seed, so a
        policy rolled out again on a step draws what the run drew, up to float rounding at near-ties)
        and their EM scores."""
        cfg = self.config
        records = self.step_records(step)
        sampling = dataclasses.replace(
            self.agent.sampling, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens, seed=self._seed(step)
        )
        states = run_batch([r["question"] for r in records], self.engine, self.retriever, dataclasses.replace(self.agent, sampling=sampling))
        scores = [exact_match(s.get("answer"), r["golden_answers"]) for s, r in zip(states, records, strict=True)]
        return records, states, torch.tensor(scores, device=self.accelerator.device)

    def _sync_engine(self) -> float:
        """Hand the engine the current weights if it holds older ones; returns the seconds it took."""
        if self.engine.weights_version == self.weights_version:
            return 0.0
        started = time.perf_counter()
        self.engine.load_weights(self.accelerator.unwrap_model(self.model), self.weights_version)
        return time.perf_counter() - started

    def _metrics(self, step: int, t: dict[str, float], lr: float, times: tuple[float, float, float, float]) -> dict[str, Any]:
        """Global rates from the summed counts; times are this process's."""
        def ratio(a: float, b: float) -> float:
            return round(a / b, 6) if b else 0.0

        n, world = t["rollouts"], self.accelerator.num_processes
        sync_s, rollout_s, teacher_s, step_s = times
        metrics: dict[str, Any] = {
            "step": step,
            "data_position": self.data_position(step + 1),
            **{name: ratio(t[f"{key}_sum"], t[f"{key}_n"]) for key, name in ROLLOUT_METRICS.items()},
            "reward_std": round(math.sqrt(max(ratio(t["score_sq"], n) - ratio(t["score_sum"], n) ** 2, 0.0)), 6),
            "wrong_frac": ratio(t["wrong"], n),
            "trained_reward": ratio(t["trained_score"], t["trained"]),
            "penalised_frac": ratio(t["penalised"], t["trained"]),
            "kl_wrong": ratio(t["kl_wrong"], t["wrong_tokens"]) if "kl_wrong" in t else None,
            "entropy": ratio(t["entropy"], t["trained_tokens"]),
            "response_length": ratio(t["tokens"], n),
            "approx_kl": ratio(t["shift"], t["shift_tokens"]),
            **{k: ratio(t[k], world) for k in ("pg_loss", "guide_loss", "vf_loss", "clipfrac", "grad_norm") if k in t},
            "lr": lr,
            "sync_s": round(sync_s, 4),
            "rollout_s": round(rollout_s, 4),
            "teacher_s": round(teacher_s, 4),
            "step_s": round(step_s, 4),
            "rollout_tokens_per_s": round(t["tokens"] / world / rollout_s, 2),
        }
        return metrics

    def _sum_over_processes(self, values: dict[str, float]) -> dict[str, float]:
        keys = sorted(values)
        summed = self._total(torch.tensor([float(values[k]) for k in keys], device=self.accelerator.device, dtype=torch.float64))
        return dict(zip(keys, summed.tolist()))

    def _total(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over processes (identity on one)."""
        return self.accelerator.reduce(x, reduction="sum") if self.accelerator.num_processes > 1 else x

    # ------------------------------------------------------------------------------ forward passes

    def _forward_logits(self, model: Any, batch: Batch) -> torch.Tensor:
        """(N, V) next-token logits for the N model tokens of ``batch`` (row-major order), over the
        shared vocabulary, at the sampling temperature. Only those positions go through the LM head:
        prompt and retrieved text need no logits, and the head dominates a small model's step."""
        from dgpo_agent.training.distill import at_temperature, head_at

        batch = batch.trimmed()
        keep = torch.zeros_like(batch.mask, dtype=torch.bool)
        keep[:, :-1] = batch.mask[:, 1:].bool()
        with self.accelerator.autocast(), head_at(keep, model):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return at_temperature(logits[:, : self.vocab], self.config.temperature)

    def _policy_logits(self, model: Any, batch: Batch) -> torch.Tensor:
        """The policy's logits as its rollouts were sampled: at the sampling temperature and cut to the
        top-p nucleus by the sampler's own warper, so old and new log-probs are those of the
        distribution that drew the tokens. The cut uses the lowest float rather than −inf, so a token
        that leaves the nucleus gets ratio 0 and no NaN in the entropy or the gradient."""
        logits = self._forward_logits(model, batch)
        if self.config.top_p < 1.0:
            from transformers import TopPLogitsWarper

            logits = TopPLogitsWarper(self.config.top_p, filter_value=torch.finfo(logits.dtype).min)(None, logits)
        return logits

    def _on_tokens(self, per_token: torch.Tensor, batch: Batch) -> torch.Tensor:
        """(N,) values for the model tokens → (B, L) indexed by token, 0 elsewhere."""
        out = torch.zeros_like(batch.mask)
        out[batch.mask.bool()] = per_token
        return out

    def _values(self, critic: Any, batch: Batch) -> torch.Tensor:
        """V at each token: the critic's output on the tokens before it (shifted right by one)."""
        trimmed = batch.trimmed()
        with self.accelerator.autocast():
            out = critic(input_ids=trimmed.input_ids, attention_mask=trimmed.attention_mask, use_cache=False).logits
        values = obj.to_tokens(out[:, :-1, 0].float())
        return torch.nn.functional.pad(values, (0, batch.mask.shape[1] - values.shape[1]))

    def _token_logprobs(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self._on_tokens(obj.gather_logprobs(logits, batch.input_ids[batch.mask.bool()]), batch)

    def _micro_batches(self, index: torch.Tensor, batch: Batch) -> Iterator[torch.Tensor]:
        """``index`` split into micro-batches of rows of similar length, shortest first, so that each
        forward pads only to its own longest row. Rollouts run from one search to several, so padding
        them all to the batch's longest would make much of every forward padding."""
        if index.numel():
            lengths = batch.attention_mask[index].sum(1)
            yield from index[lengths.argsort(stable=True)].split(self.config.micro_batch_size)

    def _score(self, batch: Batch, scores: torch.Tensor) -> _Scored:
        """The rollout-time quantities, without gradients: old log-probs and entropy (recomputed with
        the training forward, so the first PPO ratio is exactly 1), values, and the teacher's
        log-probs and KL on the rollouts that need them.

        The teacher runs only on those rollouts: the wrong ones (penalised by DGPO, and logged as
        ``kl_wrong`` by every variant), or all of them under ``kl_on: all``. At a reward rate r this
        skips a share r of the teacher's work. The exact KL reuses the policy's logits of the same pass.
        """
        policy = self.accelerator.unwrap_model(self.model)
        critic = self.accelerator.unwrap_model(self.critic) if self.critic is not None else None
        logp, entropy = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
        values = torch.zeros_like(batch.mask) if critic is not None else None
        teacher = self.teacher is not None
        needed = self._teacher_rows(scores) if teacher else None
        kl, teacher_logp = (torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)) if teacher else (None, None)
        teacher_s = 0.0
        for index in self._micro_batches(self._all_rows(batch), batch):
            micro = batch.rows(index)
            logits = self._policy_logits(policy, micro)
            logp[index] = self._token_logprobs(logits, micro)
            entropy[index] = self._on_tokens(obj.entropy(logits), micro)
            if values is not None:
                values[index] = self._values(critic, micro)
            if teacher and needed[index].any():
                started = _synced_time()
                rows, teacher_logits = self._teacher_logits(micro, needed[index])
                teacher_s += _synced_time() - started
                sub = micro.rows(rows)
                teacher_logp[index[rows]] = self._token_logprobs(teacher_logits, sub)
                if self.config.kl_estimator in obj.EXACT:
                    kl[index[rows]] = self._exact_kl(logits, teacher_logits, micro, rows)
                else:
                    kl[index[rows]] = obj.sampled_kl(logp[index[rows]], teacher_logp[index[rows]], self.config.kl_estimator) * sub.mask
        return _Scored(logp, entropy, values, kl, teacher_logp, teacher_s)

    def _teacher_rows(self, scores: torch.Tensor) -> torch.Tensor:
        """Which rollouts the teacher scores: every one under ``kl_on: all``, else the wrong ones."""
        if self.config.kl_on == "all":
            return torch.ones_like(scores, dtype=torch.bool)
        return scores < self.config.reward_threshold

    def _teacher_logits(self, micro: Batch, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the indices of the ``rows`` mask, the teacher's (N, V) logits on their model tokens)."""
        picked = rows.nonzero().squeeze(1)
        with torch.no_grad():
            return picked, self._forward_logits(self.teacher, micro.rows(picked))

    def _exact_kl(self, logits: torch.Tensor, teacher_logits: torch.Tensor, micro: Batch, rows: torch.Tensor) -> torch.Tensor:
        """The exact KL to the teacher (``kl_estimator``'s direction) per token of the picked ``rows``,
        (len(rows), L): ``logits`` are the micro-batch's, ``teacher_logits`` those rows' alone."""
        return self._on_tokens(obj.full_kl(logits[self._tokens_of(micro, rows)], teacher_logits, self.config.kl_estimator), micro.rows(rows))

    @staticmethod
    def _tokens_of(micro: Batch, rows: torch.Tensor) -> torch.Tensor:
        """Which of the micro-batch's model tokens (row-major, as logits come) belong to the picked rows."""
        return torch.isin(micro.mask.bool().nonzero()[:, 0], rows)

    def _policy_shift(self, batch: Batch, old_logp: torch.Tensor, step: int) -> tuple[float, float]:
        """(Σ over model tokens of KL(π_old ‖ π_new), the tokens) after the whole update, k3 on the
        rollouts' own tokens: how far the step moved the policy, every optimizer step of it included.
        Measured on ``shift_rollouts`` rollouts drawn at random (all when 0), an unbiased estimate at a
        fraction of a forward pass over the step."""
        policy = self.accelerator.unwrap_model(self.model)
        rows = self._all_rows(batch)
        if self.config.shift_rollouts and rows.numel() > self.config.shift_rollouts:
            generator = torch.Generator().manual_seed(self._seed(step, 2))
            rows = rows[torch.randperm(rows.numel(), generator=generator)[: self.config.shift_rollouts].to(rows.device)]
        total = tokens = 0.0
        with torch.no_grad():
            for index in self._micro_batches(rows, batch):
                micro = batch.rows(index)
                logp = self._token_logprobs(self._policy_logits(policy, micro), micro)
                total += (obj.sampled_kl(old_logp[index], logp, "k3") * micro.mask).sum().item()
                tokens += micro.mask.sum().item()
        return total, tokens

    def _all_rows(self, batch: Batch) -> torch.Tensor:
        return torch.arange(batch.input_ids.shape[0], device=self.accelerator.device)

    # ------------------------------------------------------------------------------ advantages and update

    def _advantages(self, batch: Batch, scores: torch.Tensor, scored: _Scored) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(advantages, returns or None, penalised rows).

        The task part: PPO's token rewards (outcome on the last model token) → GAE → whitened over the
        global batch's model tokens, or 0 when the rewards carry no contrast (every rollout scored the
        same and no teacher term is in the reward): the advantage is then the critic's error alone,
        which whitening would scale up to a full-size push (GRPO's baseline gives such a group 0 too);
        GRPO's group-normalised outcome on every model token; none for GKD. The teacher term β·kl_t
        then joins as ``guidance`` says: in the rewards (GAE or the reward-to-go carries it to every
        earlier token), in each token's advantage, or (``loss``) in the update's loss instead of here.
        """
        cfg, mask = self.config, batch.mask
        if self.guided:
            penalised = obj.penalised_rows(scores, cfg.reward_threshold, cfg.kl_on)
            penalty = obj.kl_penalty(scored.kl, mask, penalised, cfg.beta)
        else:
            penalised, penalty = torch.zeros_like(scores), torch.zeros_like(mask)
        in_reward = penalty if cfg.guidance == "reward" else torch.zeros_like(mask)
        returns = None
        if cfg.algorithm == "ppo":
            advantages, returns = obj.gae(obj.token_rewards(scores, mask, in_reward), scored.values, mask, cfg.gamma, cfg.lam)
            contrast = obj.rewards_contrast(scores, in_reward, self._total)
            advantages = obj.whiten(advantages, mask, self._total) if contrast else torch.zeros_like(advantages)
        elif cfg.algorithm == "grpo":
            advantages = obj.group_advantages(scores, cfg.group_size, cfg.scale_group_rewards).unsqueeze(1) * mask - obj.reward_to_go(in_reward, mask)
        else:
            advantages = -obj.reward_to_go(in_reward, mask)
        if cfg.guidance == "advantage":
            advantages = advantages - penalty
        return advantages, returns, penalised

    def _update(
        self, batch: Batch, scored: _Scored, advantages: torch.Tensor, returns: torch.Tensor | None, penalised: torch.Tensor, step: int
    ) -> dict[str, float]:
        """``ppo_epochs`` passes over this process's rollouts in ``num_minibatches`` shuffled
        mini-batches; each loss is a token mean over its mini-batch, accumulated over micro-batches.
        During the first ``critic_warmup_steps`` only the value model learns."""
        cfg, acc = self.config, self.accelerator
        train_policy = step > cfg.critic_warmup_steps
        models = [m for m, on in ((self.model, train_policy), (self.critic, True)) if m is not None and on]
        optimizers = [o for o, on in ((self.optimizer, train_policy), (self.critic_optimizer, True)) if o is not None and on]
        generator = torch.Generator().manual_seed(self._seed(step, 1))
        sums: dict[str, float] = {}
        updates = 0
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(batch.input_ids.shape[0], generator=generator).to(acc.device)
            for minibatch in order.chunk(cfg.num_minibatches):
                tokens = batch.mask[minibatch].sum().clamp(min=1)
                micros = list(self._micro_batches(minibatch, batch))
                for i, index in enumerate(micros):
                    sync = contextlib.ExitStack()
                    if i < len(micros) - 1:
                        for model in models:
                            sync.enter_context(acc.no_sync(model))
                    with sync:
                        terms = self._micro_losses(batch.rows(index), scored, advantages, returns, penalised, index, tokens, train_policy)
                        for k, v in terms.items():
                            sums[k] = sums.get(k, 0.0) + v
                if train_policy:
                    grad_norm = acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                    sums["grad_norm"] = sums.get("grad_norm", 0.0) + float(grad_norm)
                if self.critic is not None:
                    acc.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
                for optimizer in optimizers:
                    optimizer.step()
                    optimizer.zero_grad()
                updates += 1
        return {k: v / updates for k, v in sums.items()}

    def _micro_losses(
        self,
        micro: Batch,
        scored: _Scored,
        advantages: torch.Tensor,
        returns: torch.Tensor | None,
        penalised: torch.Tensor,
        index: torch.Tensor,
        tokens: torch.Tensor,
        train_policy: bool = True,
    ) -> dict[str, float]:
        """Backward the policy (and value) loss of one micro-batch; returns its share of the logged terms."""
        cfg, acc, mask = self.config, self.accelerator, micro.mask
        terms: dict[str, float] = {}
        if train_policy:
            logits = self._policy_logits(self.model, micro)
            logp = self._token_logprobs(logits, micro)
            per_token, clipped = obj.clipped_policy_loss(logp, scored.logp[index], advantages[index], cfg.clip_range)
            objective = per_token
            if cfg.entropy_coef:
                objective = objective - cfg.entropy_coef * self._on_tokens(obj.entropy(logits), micro)
            if self.guided and cfg.guidance == "loss":
                guide = obj.kl_penalty(self._kl_now(logits, logp, micro, scored.teacher_logp[index], penalised[index]), mask, penalised[index], cfg.beta)
                objective = objective + guide
                terms["guide_loss"] = (guide.sum() / tokens).item()
            acc.backward((objective * mask).sum() / tokens)
            terms["pg_loss"] = ((per_token * mask).sum() / tokens).item()
            terms["clipfrac"] = ((clipped * mask).sum() / tokens).item()
        if self.critic is not None:
            values = self._values(self.critic, micro)
            value_loss = (obj.clipped_value_loss(values, scored.values[index], returns[index], cfg.value_clip_range) * mask).sum() / tokens
            acc.backward(value_loss)
            terms["vf_loss"] = value_loss.item()
        return terms

    def _kl_now(self, logits: torch.Tensor, logp: torch.Tensor, micro: Batch, teacher_logp: torch.Tensor, penalised: torch.Tensor) -> torch.Tensor:
        """The KL to the teacher per token under the current weights, differentiable in them
        (``guidance: loss``), on the penalised rows (0 elsewhere): exact over the vocabulary in either
        direction (the teacher's forward again, on those rows only), or k3 on the sampled tokens."""
        if self.config.kl_estimator in obj.EXACT:
            kl = torch.zeros_like(micro.mask)
            if penalised.bool().any():
                rows, teacher_logits = self._teacher_logits(micro, penalised.bool())
                kl[rows] = self._exact_kl(logits, teacher_logits, micro, rows)
            return kl
        known = (penalised.unsqueeze(1) * micro.mask).bool()
        return obj.sampled_kl(logp, torch.where(known, teacher_logp, logp), "k3")

    # ------------------------------------------------------------------------------ loop, checkpoints

    def train(self) -> dict[str, Any]:
        """Resume from the last checkpoint in ``output_dir`` if there is one, then train to
        ``max_steps``; returns the last step's metrics (empty when nothing was left to do)."""
        cfg = self.config
        self.step = self.resume()
        if cfg.report_to:  # every step's metrics go to the trackers too, named by the run folder
            self.accelerator.init_trackers(Path(cfg.output_dir).name or "rl", config=_flat(dataclasses.asdict(cfg)))
        metrics: dict[str, Any] = {}
        for step in range(self.step + 1, cfg.max_steps + 1):
            metrics = self.train_step(step)
            self.step = step
            self._watch_shift(step, metrics["approx_kl"])
            self._watch_reward(step, metrics["reward_std"])
            if self.evaluate and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metrics.update(self._evaluate())
            if self.accelerator.is_main_process:
                with (self.run_dir / METRICS).open("a") as sink:
                    sink.write(json.dumps(metrics) + "\n")
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                self.save_checkpoint(step)
        for tracker in self.accelerator.trackers:  # not end_training(): it ends the process group the save still needs
            tracker.finish()
        return metrics

    def _watch_shift(self, step: int, approx_kl: float) -> None:
        """Say so, in one line, when ``stall_steps`` updates in a row have left the policy where it was
        (approx-KL below ``stall_kl``): a flat curve then means no learning, not a finished one."""
        cfg = self.config
        moving = approx_kl >= cfg.stall_kl or step <= cfg.critic_warmup_steps
        self.still = 0 if moving else self.still + 1
        if cfg.stall_steps and self.still == cfg.stall_steps and self.accelerator.is_main_process:
            log.warning(
                "RL step %d: the policy has not moved for %d steps (approx-KL < %g each): raise the learning rate, "
                "ppo_epochs or num_minibatches", step, cfg.stall_steps, cfg.stall_kl,
            )

    def _watch_reward(self, step: int, reward_std: float) -> None:
        """Say so, in one line, when ``stall_steps`` steps in a row without the teacher's term had
        rollouts that all scored the same: the reward then tells no action from another, the task
        advantage is 0, and only the entropy bonus (at full size, through Adam) moves the policy."""
        cfg = self.config
        self.level = self.level + 1 if reward_std == 0 and not self.guided else 0
        if cfg.stall_steps and self.level == cfg.stall_steps and self.accelerator.is_main_process:
            log.warning(
                "RL step %d: every rollout has scored the same for %d steps: the reward has nothing to learn from; "
                "start from a cold start or let the teacher guide (dgpo, gkd)", step, cfg.stall_steps,
            )

    def _evaluate(self) -> dict[str, float]:
        """The evaluation metrics (main process only: the others wait for it)."""
        result = {}
        if self.accelerator.is_main_process:
            result = {f"dev_{k}": v for k, v in self.evaluate(self.accelerator.unwrap_model(self.model)).items()}
        self.accelerator.wait_for_everyone()
        return result

    def save_checkpoint(self, step: int) -> Path:
        """Models, optimizers, schedulers and RNG states (``accelerator.save_state``) plus the step and
        data position, written to a temporary directory and renamed, so a kill never leaves a
        half-written checkpoint that looks complete."""
        acc = self.accelerator
        final = self.run_dir / CHECKPOINTS / f"step-{step:07d}"
        partial = final.with_name(final.name + ".partial")
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {"step": step, "data_position": self.data_position(step + 1), "config": dataclasses.asdict(self.config)}
            (partial / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            self._prune()
        acc.wait_for_everyone()
        return final

    def _prune(self) -> None:
        limit = self.config.save_total_limit
        if limit is not None:
            for old in checkpoints(self.run_dir)[:-limit]:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> int:
        """Load the newest complete checkpoint; returns its step (0 when starting fresh). The metrics
        log is cut back to that step, so it never holds a step twice."""
        found = checkpoints(self.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not found:
            step = 0
        else:
            state = json.loads((found[-1] / STATE_FILE).read_text())
            changed = [k for k, v in state["config"].items() if k not in RESUMABLE_CHANGES and getattr(self.config, k, None) != v]
            if changed:
                raise DGPOError(
                    f"{found[-1]} was trained with different {', '.join(changed)}: resume with the same config or use a new output_dir"
                )
            self.accelerator.load_state(str(found[-1]))
            self.weights_version += 1
            step = state["step"]
        if self.accelerator.is_main_process:
            drop_after(self.run_dir / METRICS, step)
        self.accelerator.wait_for_everyone()
        return step

    def save_policy(self, path: str | Path) -> Path:
        """The trained policy and its tokenizer as a Hugging Face checkpoint directory."""
        path = Path(path)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.accelerator.unwrap_model(self.model).save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        self.accelerator.wait_for_everyone()
        return path


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = run_dir / CHECKPOINTS
    return sorted(p for p in root.glob("step-*") if (p / STATE_FILE).is_file()) if root.is_dir() else []


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """A config as trackers take it: lists as text (tensorboard's hparams take scalars only)."""
    return {k: str(v) if isinstance(v, list) else v for k, v in config.items()}


def _synced_time() -> float:
    """Wall time after the GPU has finished queued work, so per-phase timings are honest."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


# ----------------------------------------------------------------------------------- entry points


def train_rl(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict],
    retriever: Any,
    agent: AgentConfig,
    config: RLConfig,
    teacher: Any | None = None,
    critic: Any | None = None,
    evaluate: Callable[[Any], dict[str, float]] | None = None,
    engine: Any | None = None,
) -> dict[str, Any]:
    """Train (or resume) to ``config.max_steps`` and save the policy to ``output_dir/final``;
    returns the last step's metrics. ``engine`` (a ``RolloutEngine``) generates the rollouts; by
    default the trained model itself, through the transformers backend."""
    trainer = RLTrainer(model, tokenizer, records, retriever, agent, config, teacher=teacher, critic=critic, evaluate=evaluate, engine=engine)
    metrics = trainer.train()
    trainer.save_policy(Path(config.output_dir) / "final")
    return metrics


def run_file(path: Path) -> dict[str, Any]:
    """Load everything a run file (``config.RLRunFile``) names and train; returns the last step's metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dgpo_agent.evals.data import load_dataset
    from dgpo_agent.store import open_retriever
    from dgpo_agent.training.config import load_run_file

    run = load_run_file(path)
    if run.rl.guided and not run.teacher:
        raise DGPOError(f"{run.rl.algorithm} with kl_on {run.rl.kl_on} and beta {run.rl.beta} needs a teacher: name one in {path}")

    def load(name: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)

    teacher = load(run.teacher) if run.teacher and run.rl.guided else None
    records, retriever = load_dataset(run.train_file), open_retriever(run.store, run.collection)
    agent = run.agent.config()
    return train_rl(load(run.model), AutoTokenizer.from_pretrained(run.model), records, retriever, agent, run.rl, teacher=teacher)


def check_cpu_launch(environ: Mapping[str, str]) -> None:
    """Refuse a silently single-process CPU launch. ``accelerate launch --cpu --num_processes N`` starts
    N processes only through mpirun; without it accelerate (1.x) runs the script once, with a master
    address set but no world size. Torch's launcher with gloo does start N processes."""
    cpu = environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if cpu and "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ:
        raise DGPOError(
            "accelerate launch --cpu runs one process without mpirun: use "
            "ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N (gloo)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    """``accelerate launch [--num_processes N] -m dgpo_agent.training.rl --config rl.yaml``; plain
    ``python -m dgpo_agent.training.rl --config rl.yaml`` runs one process."""
    import argparse

    parser = argparse.ArgumentParser(description="DGPO / PPO / GRPO in the agent environment")
    parser.add_argument("--config", type=Path, required=True, help="run file (YAML): see training.config.RLRunFile")
    args = parser.parse_args(argv)
    try:
        check_cpu_launch(os.environ)
        metrics = run_file(args.config)
    except DGPOError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
