"""Phase 2 of DGPO: reinforcement learning in the agent environment, guided by the teacher (paper §4).

Each step rolls out a batch of training questions through the batched agent graph (``run_batch``:
the same step functions as the LangGraph graph, real retrieval, the environment mask), scores the
final answers by exact match, adds the teacher's per-token KL penalty to the reward of rollouts that
scored below the threshold, and updates the policy with PPO-clip and a value model (GAE, γ = λ = 1:
the paper's setting) or with GRPO's critic-free group baseline. Without a teacher (or with β = 0) the
same loop is the plain PPO / GRPO baseline.

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
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import exact_match
from dgpo_agent.rollout import AgentConfig, TokenTrajectory, run_batch, token_trajectory
from dgpo_agent.state import AgentState
from dgpo_agent.training import rl_objective as obj
from dgpo_agent.training.callbacks import drop_after
from dgpo_agent.training.config import as_number

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.jsonl"
# Settings that may change between a run and its resumption without changing what it computes.
RESUMABLE_CHANGES = ("max_steps", "save_every", "eval_every", "save_total_limit", "output_dir", "stall_kl", "stall_steps")


@dataclass
class RLConfig:
    """RL settings, defaulting to the reference recipe (``scripts/train_dgpo.sh``, veRL's yaml).

    Batch sizes are per process, as in TRL: a step rolls out ``rollout_batch_size`` prompts ×
    ``group_size`` rollouts on every process, and ``accelerate launch`` multiplies that by the number
    of processes (the paper: 512 prompts, 1 rollout each, mini-batch 256 → ``num_minibatches`` 2).

    The teacher term (``beta``, on the rollouts ``kl_on`` picks) enters as ``guidance`` says:
    ``reward``, the reference code's, subtracts β·kl_t from each token's reward, so the return sums it
    over every later token and a rollout lowers its penalty by being short; ``advantage`` subtracts
    β·kl_t from that token's advantage alone (on-policy distillation's per-token signal, which no
    length can game); ``loss`` adds β·KL_t(π_θ ‖ π_T), differentiated through the policy, to the loss.
    """

    output_dir: str = field(default="runs/rl", metadata={"help": "checkpoints, metrics.jsonl and the final policy"})
    algorithm: Literal["ppo", "grpo", "gkd"] = field(
        default="ppo",
        metadata={"help": "ppo: value model + GAE (the paper); grpo: group-relative, critic-free; gkd: the teacher term alone, no task reward (on-policy distillation)"},
    )
    beta: float = field(default=0.001, metadata={"help": "weight of the teacher term"})
    guidance: Literal["reward", "advantage", "loss"] = field(default="reward", metadata={"help": "where the teacher term enters: each token's reward, its advantage, or the loss"})
    kl_on: Literal["wrong", "all", "none"] = field(default="wrong", metadata={"help": "which rollouts get the teacher term: score < reward_threshold (DGPO), all, none"})
    kl_estimator: Literal["k1", "k3", "full"] = field(default="k1", metadata={"help": "k1 = log π_θ − log π_T (reference code), k3, or the exact full-vocabulary KL"})
    reward_threshold: float = field(default=0.1, metadata={"help": "rollouts scoring below this count as wrong"})
    learning_rate: float = field(default=1e-6, metadata={"help": "policy learning rate"})
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "value-model learning rate"})
    warmup_ratio: float = field(default=0.285, metadata={"help": "policy warm-up, as a share of max_steps (then constant)"})
    critic_warmup_ratio: float = field(default=0.015, metadata={"help": "value-model warm-up, as a share of max_steps"})
    critic_warmup_steps: int = field(default=0, metadata={"help": "first steps that train only the value model (veRL's critic_warmup)"})
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clip ε"})
    value_clip_range: float = field(default=0.5, metadata={"help": "value clip around the rollout-time values"})
    entropy_coef: float = field(default=0.001, metadata={"help": "entropy bonus in the policy loss"})
    gamma: float = 1.0
    lam: float = 1.0
    scale_group_rewards: bool = field(default=True, metadata={"help": "GRPO: divide by the group's reward std"})
    rollout_batch_size: int = field(default=512, metadata={"help": "prompts per process per step"})
    group_size: int = field(default=1, metadata={"help": "rollouts per prompt (GRPO needs at least 2)"})
    ppo_epochs: int = 1
    num_minibatches: int = field(default=2, metadata={"help": "optimizer steps per epoch over one step's rollouts"})
    micro_batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    max_steps: int = 1000
    save_every: int = 50
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations of the policy (0: none; needs an evaluate function)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (None: all)"})
    seed: int = 0
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature (log-probs use the same)"})
    top_p: float = field(default=1.0, metadata={"help": "rollout nucleus (log-probs use the same truncated distribution)"})
    stall_kl: float = field(default=1e-4, metadata={"help": "approx-KL below which a step counts as not moving the policy"})
    stall_steps: int = field(default=5, metadata={"help": "consecutive such steps before the log says the policy is not moving (0: never)"})

    def __post_init__(self) -> None:
        choices = {
            "algorithm": ("ppo", "grpo", "gkd"), "guidance": ("reward", "advantage", "loss"),
            "kl_on": ("wrong", "all", "none"), "kl_estimator": ("k1", "k3", "full"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise DGPOError(f"{name} must be one of {', '.join(allowed)} (got {getattr(self, name)!r})")
        positive = ("rollout_batch_size", "group_size", "ppo_epochs", "num_minibatches", "micro_batch_size", "max_steps", "save_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise DGPOError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.beta < 0 or self.temperature <= 0:
            raise DGPOError(f"beta must be >= 0 and temperature > 0 (got beta={self.beta}, temperature={self.temperature})")
        if not 0 < self.top_p <= 1:
            raise DGPOError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.algorithm == "grpo" and self.group_size < 2:
            raise DGPOError(f"grpo needs group_size >= 2 to form a baseline (got {self.group_size})")
        if self.algorithm == "gkd" and (self.kl_on == "none" or self.beta == 0):
            raise DGPOError("gkd learns from the teacher term alone: set beta > 0 and kl_on to all (or wrong)")
        if self.guidance == "loss" and self.kl_estimator == "k1":
            raise DGPOError("guidance: loss needs kl_estimator full or k3: k1's gradient is zero in expectation")
        if self.num_minibatches > self.rollout_batch_size * self.group_size:
            raise DGPOError(f"num_minibatches={self.num_minibatches} exceeds the {self.rollout_batch_size * self.group_size} rollouts per step")
        if self.critic_warmup_steps < 0 or self.stall_steps < 0:
            raise DGPOError("critic_warmup_steps and stall_steps must be >= 0")
        if self.critic_warmup_steps and not self.uses_critic:
            raise DGPOError(f"critic_warmup_steps needs a value model: {self.algorithm} has none (use 0)")

    @property
    def uses_critic(self) -> bool:
        return self.algorithm == "ppo"


# ----------------------------------------------------------------------------------- rollout statistics


def rollout_stats(state: AgentState, record: dict) -> dict[str, float]:
    """One rollout's reward (EM of the answer the model gave, never text from the prompt or the
    retrieved documents) and the behaviour counts the log aggregates."""
    steps = state["steps"]
    invalid = [s for s in steps if s["kind"] == "invalid"]
    searches = sum(s["kind"] == "search" for s in steps)
    empty = sum(s.get("reason") == "empty_query" for s in invalid)
    return {
        "reward": exact_match(state.get("answer"), record["golden_answers"]),
        "turns": float(state["turn"]),
        "valid_actions": float(state["turn"] - len(invalid)),
        "searches": float(searches),
        "search_attempts": float(searches + empty),
        "empty_queries": float(empty),
        "answered": float(state.get("answer") is not None),
    }


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


def warmup_schedule(optimizer: Any, warmup_steps: int) -> Any:
    """A constant learning rate after a linear warm-up in which step k (from 1) trains at k/W of it, so
    the first step already moves the policy (transformers' schedule starts at 0)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda done: min(1.0, (done + 1) / warmup_steps) if warmup_steps else 1.0)


class RLTrainer:
    """DGPO, PPO or GRPO over rollouts of ``records`` (question records with ``golden_answers``).

    ``teacher`` None (or ``beta`` 0 or ``kl_on`` none) gives the teacher-free baseline; with a teacher
    its KL is still measured and logged on wrong rollouts. ``critic`` defaults to ``value_model(policy)``
    for PPO. All models stay in eval mode: dropout off, as TRL's ``disable_dropout`` does for RL.
    ``evaluate`` (the policy model → metrics) runs on the main process every ``eval_every`` steps and
    at the end; its metrics join that step's log with a ``dev_`` prefix (the EM curve).
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
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        from dgpo_agent.backends.transformers import TransformersPolicy
        from dgpo_agent.training.distill import check_vocab

        if not records:
            raise DGPOError("no training questions: pass records with 'question' and 'golden_answers'")
        if missing := [k for k in ("question", "golden_answers") if k not in records[0]]:
            raise DGPOError(f"training records lack {', '.join(missing)}: pass question records such as the world's train.jsonl")
        self.config, self.agent, self.records, self.retriever = config, agent, list(records), retriever
        self.tokenizer = tokenizer
        self.accelerator = acc = Accelerator()
        set_seed(config.seed)
        self.vocab = check_vocab(tokenizer, model, teacher)
        self.guided = teacher is not None and config.beta > 0 and config.kl_on != "none"
        if config.algorithm == "gkd" and not self.guided:
            raise DGPOError("gkd learns from the teacher alone: pass a teacher")
        if config.uses_critic and critic is None:
            critic = value_model(model)
        if not config.uses_critic:
            critic = None

        def optimizer(module: Any, lr: float, warmup: float) -> tuple[Any, Any]:
            opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=config.weight_decay)
            return opt, warmup_schedule(opt, round(warmup * config.max_steps))

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
        self.rollout_policy = TransformersPolicy(acc.unwrap_model(self.model), tokenizer)
        self.pad_id = self.rollout_policy.pad_id
        self.run_dir = Path(config.output_dir)
        self.evaluate = evaluate
        self.step = 0
        self.still = 0  # consecutive steps whose update left the policy where it was
        self._order: tuple[int, list[int]] = (-1, [])

    # ------------------------------------------------------------------------------ data order

    def _seed(self, *parts: int) -> int:
        """A seed for (step, …) on this process, so sampling and shuffles never depend on history."""
        return int(np.random.SeedSequence([self.config.seed, *parts, self.accelerator.process_index]).generate_state(1)[0])

    def data_position(self, step: int) -> int:
        """Global index of the first prompt of ``step`` in the epoch-by-epoch shuffled stream."""
        return (step - 1) * self.config.rollout_batch_size * self.accelerator.num_processes

    def step_records(self, step: int) -> list[dict]:
        """This process's prompts for ``step``, each repeated ``group_size`` times in a row."""
        per = self.config.rollout_batch_size
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
        records = self.step_records(step)
        sampling = dataclasses.replace(self.agent.sampling, temperature=cfg.temperature, top_p=cfg.top_p, seed=self._seed(step))
        states = run_batch([r["question"] for r in records], self.rollout_policy, self.retriever, dataclasses.replace(self.agent, sampling=sampling))
        rollout_s = time.perf_counter() - started
        stats = [rollout_stats(s, r) for s, r in zip(states, records, strict=True)]
        scores = torch.tensor([s["reward"] for s in stats], device=acc.device)
        batch = pack([token_trajectory(s) for s in states], self.pad_id, acc.device)
        with torch.no_grad():
            scored = self._score(batch, scores)
        advantages, returns, penalised = self._advantages(batch, scores, scored)
        training_policy = step > cfg.critic_warmup_steps
        lr = self.schedulers[0].get_last_lr()[0] if training_policy else 0.0  # what this step's update trains with
        losses = self._update(batch, scored, advantages, returns, penalised, step)
        # Each schedule counts its own optimizer's steps: the policy's warm-up starts with its first update.
        for scheduler in self.schedulers[int(not training_policy) :]:
            scheduler.step()
        wrong = (scores < cfg.reward_threshold).float()
        counts = {k: sum(s[k] for s in stats) for k in stats[0]}
        counts.update(
            rollouts=float(len(stats)),
            tokens=batch.mask.sum().item(),
            entropy=(scored.entropy * batch.mask).sum().item(),
            penalised=penalised.sum().item(),
            wrong=wrong.sum().item(),
            shift=self._policy_shift(batch, scored.logp),
        )
        if scored.kl is not None:
            wrong_tokens = batch.mask * wrong.unsqueeze(1)
            counts.update(kl_wrong=(scored.kl * wrong_tokens).sum().item(), wrong_tokens=wrong_tokens.sum().item())
        totals = self._sum_over_processes(counts | losses)
        return self._metrics(step, totals, lr, rollout_s, scored.teacher_s, time.perf_counter() - started)

    def _metrics(self, step: int, t: dict[str, float], lr: float, rollout_s: float, teacher_s: float, step_s: float) -> dict[str, Any]:
        """Global rates from the summed counts; times are this process's."""
        def ratio(a: float, b: float) -> float:
            return round(a / b, 6) if b else 0.0

        n, world = t["rollouts"], self.accelerator.num_processes
        metrics: dict[str, Any] = {
            "step": step,
            "data_position": self.data_position(step + 1),
            "reward": ratio(t["reward"], n),
            "valid_action_rate": ratio(t["valid_actions"], t["turns"]),
            "search_count": ratio(t["searches"], n),
            "empty_query_rate": ratio(t["empty_queries"], t["search_attempts"]),
            "answered": ratio(t["answered"], n),
            "wrong_frac": ratio(t["wrong"], n),
            "penalised_frac": ratio(t["penalised"], n),
            "kl_wrong": ratio(t["kl_wrong"], t["wrong_tokens"]) if "kl_wrong" in t else None,
            "entropy": ratio(t["entropy"], t["tokens"]),
            "response_length": ratio(t["tokens"], n),
            "approx_kl": ratio(t["shift"], t["tokens"]),
            **{k: ratio(t[k], world) for k in ("pg_loss", "guide_loss", "vf_loss", "clipfrac", "grad_norm") if k in t},
            "lr": lr,
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
        from dgpo_agent.training.distill import head_at

        batch = batch.trimmed()
        keep = torch.zeros_like(batch.mask, dtype=torch.bool)
        keep[:, :-1] = batch.mask[:, 1:].bool()
        with self.accelerator.autocast(), head_at(keep, model):
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
        return logits[:, : self.vocab].float() / self.config.temperature

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
        forward pads only to its own longest row. Rollouts run from one search to several: padded to
        the whole batch's longest, 37% of the positions at the tiny default were padding."""
        if index.numel():
            lengths = batch.attention_mask[index].sum(1)
            yield from index[lengths.argsort(stable=True)].split(self.config.micro_batch_size)

    def _score(self, batch: Batch, scores: torch.Tensor) -> _Scored:
        """The rollout-time quantities, without gradients: old log-probs and entropy (recomputed with
        the training forward, so the first PPO ratio is exactly 1), values, and the teacher's KL on
        the rollouts that need it."""
        policy = self.accelerator.unwrap_model(self.model)
        critic = self.accelerator.unwrap_model(self.critic) if self.critic is not None else None
        logp, entropy = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
        values = torch.zeros_like(batch.mask) if critic is not None else None
        for index in self._micro_batches(self._all_rows(batch), batch):
            micro = batch.rows(index)
            logits = self._policy_logits(policy, micro)
            logp[index] = self._token_logprobs(logits, micro)
            entropy[index] = self._on_tokens(obj.entropy(logits), micro)
            if values is not None:
                values[index] = self._values(critic, micro)
        if self.teacher is None:
            return _Scored(logp, entropy, values, None, None, 0.0)
        return _Scored(logp, entropy, values, *self._teacher_kl(batch, logp, scores))

    def _teacher_kl(self, batch: Batch, logp: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Per-token KL to the teacher and the teacher's log-probs (0 elsewhere), and the seconds its
        forward passes took.

        The teacher runs only on the rollouts whose KL is used: the wrong ones (penalised by DGPO,
        and logged as ``kl_wrong`` by every variant), or all of them under ``kl_on: all``. At a
        reward rate r this skips a share r of the teacher's work.
        """
        cfg = self.config
        needed = torch.ones_like(scores, dtype=torch.bool) if cfg.kl_on == "all" else scores < cfg.reward_threshold
        kl, teacher_logp = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
        teacher_s = 0.0
        policy = self.accelerator.unwrap_model(self.model)
        for index in self._micro_batches(needed.nonzero().squeeze(1), batch):
            micro = batch.rows(index)
            started = _synced_time()
            teacher_logits = self._forward_logits(self.teacher, micro)
            teacher_logp[index] = self._token_logprobs(teacher_logits, micro)
            teacher_s += _synced_time() - started
            if cfg.kl_estimator == "full":
                kl[index] = self._on_tokens(obj.full_kl(self._policy_logits(policy, micro), teacher_logits), micro)
            else:
                kl[index] = obj.sampled_kl(logp[index], teacher_logp[index], cfg.kl_estimator) * micro.mask
        return kl, teacher_logp, teacher_s

    def _policy_shift(self, batch: Batch, old_logp: torch.Tensor) -> float:
        """Σ over model tokens of KL(π_old ‖ π_new) after the whole update (k3 on the rollouts' own
        tokens): how far the step moved the policy, every optimizer step of it included."""
        policy = self.accelerator.unwrap_model(self.model)
        total = 0.0
        with torch.no_grad():
            for index in self._micro_batches(self._all_rows(batch), batch):
                micro = batch.rows(index)
                logp = self._token_logprobs(self._policy_logits(policy, micro), micro)
                total += (obj.sampled_kl(old_logp[index], logp, "k3") * micro.mask).sum().item()
        return total

    def _all_rows(self, batch: Batch) -> torch.Tensor:
        return torch.arange(batch.input_ids.shape[0], device=self.accelerator.device)

    # ------------------------------------------------------------------------------ advantages and update

    def _advantages(self, batch: Batch, scores: torch.Tensor, scored: _Scored) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(advantages, returns or None, penalised rows).

        The task part: PPO's token rewards (outcome on the last model token) → GAE → whitened over the
        global batch's model tokens; GRPO's group-normalised outcome on every model token; none for
        GKD. The teacher term β·kl_t then joins as ``guidance`` says: in the rewards (GAE or the
        reward-to-go carries it to every earlier token), in each token's advantage, or (``loss``) in
        the update's loss instead of here.
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
            advantages = obj.whiten(advantages, mask, self._total)
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
        """KL(π_θ ‖ π_T) per token under the current weights, differentiable in them (``guidance:
        loss``): exact over the vocabulary (the teacher's forward again), or k3 on the sampled tokens
        (0 on rows without the teacher's log-probs)."""
        if self.config.kl_estimator == "full":
            with torch.no_grad():
                teacher_logits = self._forward_logits(self.teacher, micro)
            return self._on_tokens(obj.full_kl(logits, teacher_logits), micro)
        known = (penalised.unsqueeze(1) * micro.mask).bool()
        return obj.sampled_kl(logp, torch.where(known, teacher_logp, logp), "k3")

    # ------------------------------------------------------------------------------ loop, checkpoints

    def train(self) -> dict[str, Any]:
        """Resume from the last checkpoint in ``output_dir`` if there is one, then train to
        ``max_steps``; returns the last step's metrics (empty when nothing was left to do)."""
        cfg = self.config
        self.step = self.resume()
        metrics: dict[str, Any] = {}
        for step in range(self.step + 1, cfg.max_steps + 1):
            metrics = self.train_step(step)
            self.step = step
            self._watch_shift(step, metrics["approx_kl"])
            if self.evaluate and cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.max_steps):
                metrics.update(self._evaluate())
            if self.accelerator.is_main_process:
                with (self.run_dir / METRICS_FILE).open("a") as sink:
                    sink.write(json.dumps(metrics) + "\n")
            if step % cfg.save_every == 0 or step == cfg.max_steps:
                self.save_checkpoint(step)
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
            step = state["step"]
        if self.accelerator.is_main_process:
            drop_after(self.run_dir / METRICS_FILE, step)
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
) -> dict[str, Any]:
    """Train (or resume) to ``config.max_steps`` and save the policy to ``output_dir/final``;
    returns the last step's metrics."""
    trainer = RLTrainer(model, tokenizer, records, retriever, agent, config, teacher=teacher, critic=critic, evaluate=evaluate)
    metrics = trainer.train()
    trainer.save_policy(Path(config.output_dir) / "final")
    return metrics


def load_run(path: Path) -> dict[str, Any]:
    """Read a run file: ``model``, optional ``teacher``, ``train_file`` (question records), ``store``
    (a Chroma directory), ``agent`` (max_turns, top_k, max_new_tokens) and ``rl`` (RLConfig fields)."""
    import yaml

    if not path.is_file():
        raise DGPOError(f"run file {path} not found: pass an existing YAML file to --config")
    run = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("model", "train_file", "store") if not run.get(k)]
    if missing:
        raise DGPOError(f"run file {path} lacks {', '.join(missing)}: name the policy checkpoint, the question file and the store")
    fields = {f.name: f.default for f in dataclasses.fields(RLConfig)}
    unknown = set(run.get("rl") or {}) - set(fields)
    if unknown:
        raise DGPOError(f"unknown rl settings in {path}: {', '.join(sorted(unknown))}")
    run["rl"] = {k: as_number("rl", k, fields[k], v) for k, v in (run.get("rl") or {}).items()}
    return run


def run_file(path: Path) -> dict[str, Any]:
    """Load everything a run file names and train; returns the last step's metrics."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.store import open_retriever
    from dgpo_agent.world import load_questions

    run = load_run(path)
    agent_settings = dict(run.get("agent") or {})
    sampling = SamplingParams(max_new_tokens=agent_settings.pop("max_new_tokens", 500))
    agent = AgentConfig(**agent_settings, sampling=sampling)
    config = RLConfig(**(run.get("rl") or {}))

    def load(name: str) -> Any:
        return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)

    teacher = load(run["teacher"]) if run.get("teacher") else None
    records, retriever = load_questions(run["train_file"]), open_retriever(run["store"])
    return train_rl(load(run["model"]), AutoTokenizer.from_pretrained(run["model"]), records, retriever, agent, config, teacher=teacher)


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
    parser.add_argument("--config", type=Path, required=True, help="run file (YAML): see load_run")
    args = parser.parse_args(argv)
    try:
        check_cpu_launch(os.environ)
        metrics = run_file(args.config)
    except DGPOError as err:
        raise SystemExit(f"error: {err}") from None
    print(json.dumps(metrics))


if __name__ == "__main__":
    main()
