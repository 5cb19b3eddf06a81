"""``RLConfig``: every setting of the RL trainer (``training.rl``), and the RL methods the pipeline
names (``dgpo``, ``ppo``, ``grpo``, ``gkd``) as settings of it.

Defaults are the reference recipe (the paper's ``scripts/train_dgpo.sh`` and veRL's yaml); presets
(``training.config``) override them for other scales. Importing this module is cheap: no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.checks import at_least, fraction, one_of, positive, trackers

FROM_BASE = "-from-base"  # a method name with this suffix starts from the base student, not the cold start
# What each method may train, as the RLConfig settings that define it: the first value of each is what
# the method trains unless the rl settings choose another listed one, and what it always trains as a
# baseline. DGPO is the task reward plus the teacher's term on the rollouts ``kl_on`` picks (wrong ones
# by the paper), through PPO by the paper or GRPO's critic-free advantage; PPO and GRPO never see the
# teacher; GKD is the teacher's term alone, on every rollout by the paper or on wrong ones only.
RL_METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "dgpo": {"algorithm": ("ppo", "grpo"), "kl_on": ("wrong", "all")},
    "ppo": {"algorithm": ("ppo",), "kl_on": ("none",)},
    "grpo": {"algorithm": ("grpo",), "kl_on": ("none",)},
    "gkd": {"algorithm": ("gkd",), "kl_on": ("all", "wrong")},
}


@dataclass
class RLConfig:
    """RL settings, defaulting to the reference recipe (``scripts/train_dgpo.sh``, veRL's yaml), except
    for the teacher's term: the default is a KL loss over the vocabulary, chosen on dev questions (the
    best dev EM of the three forms, and unlike the reward form it cannot be lowered by answering short;
    the runs are in bench/README.md, "The RL rework"), then ahead of both other forms on test on every
    one of three seeds (bench/README.md, "The teacher's term: in the loss, the reward or the advantage");
    the reference code's form is ``guidance: reward, beta: 0.001, kl_estimator: k1``.

    Batch sizes are per process, as in TRL: a step rolls out ``rollout_batch_size`` prompts ×
    ``group_size`` rollouts on every process, and ``accelerate launch`` multiplies that by the number
    of processes (the paper: 512 prompts, 1 rollout each, mini-batch 256 → ``num_minibatches`` 2).

    The teacher term (``beta``, on the rollouts ``kl_on`` picks) enters as ``guidance`` says:
    ``reward``, the reference code's, subtracts β·kl_t from each token's reward, so the return sums it
    over every later token and a rollout lowers its penalty by being short; ``advantage`` subtracts
    β·kl_t from that token's advantage alone (on-policy distillation's per-token signal, which no
    length can game); ``loss`` adds β·KL_t, differentiated through the policy, to the loss. ``kl_t`` is
    KL(π_θ ‖ π_T) (exact, ``full``, or estimated on the sampled token, ``k1``/``k3``) or the exact
    forward KL(π_T ‖ π_θ) (``forward``: the cold start's loss, which raises the teacher's tokens even
    where the student gives them almost nothing). From a base student only ``forward`` teaches answers
    at CPU budgets; from the cold start it widens the student's distribution and ends below the reverse
    KL on dev and test (bench/README.md, same section), so the default stays ``full``.
    """

    output_dir: str = field(default="runs/rl", metadata={"help": "checkpoints, metrics.jsonl and the final policy"})
    algorithm: Literal["ppo", "grpo", "gkd"] = field(
        default="ppo",
        metadata={"help": "ppo: value model + GAE (the paper); grpo: group-relative, critic-free; gkd: the teacher term alone, no task reward (on-policy distillation)"},
    )
    beta: float = field(default=1.0, metadata={"help": "weight of the teacher term (the reference code's: 0.001, in the reward)"})
    guidance: Literal["reward", "advantage", "loss"] = field(default="loss", metadata={"help": "where the teacher term enters: each token's reward (the reference code), its advantage, or the loss"})
    kl_on: Literal["wrong", "all", "none"] = field(default="wrong", metadata={"help": "which rollouts get the teacher term: score < reward_threshold (DGPO), all, none"})
    kl_estimator: Literal["k1", "k3", "full", "forward"] = field(
        default="full",
        metadata={"help": "full: the exact KL(π_θ ‖ π_T) over the vocabulary; forward: the exact KL(π_T ‖ π_θ), the cold start's loss on the student's own tokens; k1 = log π_θ − log π_T (the reference code's) or k3 on the sampled tokens"},
    )
    reward_threshold: float = field(default=0.1, metadata={"help": "rollouts scoring below this count as wrong"})
    learning_rate: float = field(default=1e-6, metadata={"help": "policy learning rate"})
    critic_learning_rate: float = field(default=1e-5, metadata={"help": "value-model learning rate"})
    warmup_ratio: float = field(default=0.285, metadata={"help": "policy warm-up, as a share of max_steps (then as lr_scheduler_type says)"})
    critic_warmup_ratio: float = field(default=0.015, metadata={"help": "value-model warm-up, as a share of max_steps"})
    lr_scheduler_type: Literal["constant", "cosine"] | None = field(
        default=None, metadata={"help": "after the warm-ups, both learning rates stay constant (None, the reference recipe) or decay on a half cosine towards 0 at max_steps"}
    )
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
    candidate_prompts: int | None = field(
        default=None,
        metadata={"help": "prompts per process rolled out each step, of which the update trains on rollout_batch_size: those whose rollouts disagree first, then others at random (dynamic sampling: rl_objective.informative_groups); the logged rollout metrics cover all of them (None: rollout_batch_size, every prompt trained on)"},
    )
    ppo_epochs: int = 1
    num_minibatches: int = field(default=2, metadata={"help": "optimizer steps per epoch over one step's rollouts"})
    micro_batch_size: int = field(default=8, metadata={"help": "sequences per forward pass"})
    max_steps: int = field(default=1000, metadata={"help": "RL steps (0: none)"})
    save_every: int = 50
    eval_every: int = field(default=0, metadata={"help": "steps between evaluations of the policy (0: none; needs an evaluate function)"})
    save_total_limit: int | None = field(default=2, metadata={"help": "checkpoints kept (None: all)"})
    seed: int = 0
    temperature: float = field(default=1.0, metadata={"help": "rollout sampling temperature (log-probs use the same)"})
    max_new_tokens: int = field(default=500, metadata={"help": "token budget of one rollout turn"})
    top_p: float = field(default=1.0, metadata={"help": "rollout nucleus (log-probs use the same truncated distribution)"})
    precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={"help": "bf16: autocast forwards on float32 master weights (GPU)"})
    rollout_engine: Literal["transformers", "vllm"] | None = field(
        default=None,
        metadata={"help": "what generates the rollouts: the trained model itself through transformers (None, the default), or a vLLM engine beside it on its GPU that gets the trained weights after each update (the vllm extra; not yet run on a GPU)"},
    )
    vllm_gpu_memory_utilization: float | None = field(
        default=None,
        metadata={"help": "rollout_engine vllm: the share of the GPU's memory the engine takes, its weights and KV cache (None: VLLMPolicy.colocated's default); training needs the rest"},
    )
    shift_rollouts: int = field(default=32, metadata={"help": "rollouts the post-update approx-KL is measured on (0: all)"})
    stall_kl: float = field(default=1e-4, metadata={"help": "approx-KL below which a step counts as not moving the policy"})
    stall_steps: int = field(default=5, metadata={"help": "consecutive such steps before the log says the policy is not moving, or, without the teacher, consecutive steps whose rollouts all scored the same before it says the reward has nothing to learn from (0: never)"})
    report_to: list[str] | None = field(default=None, metadata={"help": "accelerate trackers that get every step's metrics beside metrics.jsonl: tensorboard, wandb, trackio, ..."})

    def __post_init__(self) -> None:
        choices = {
            "algorithm": ("ppo", "grpo", "gkd"), "guidance": ("reward", "advantage", "loss"), "precision": ("fp32", "bf16"),
            "kl_on": ("wrong", "all", "none"), "kl_estimator": ("k1", "k3", "full", "forward"),
            "lr_scheduler_type": (None, "constant", "cosine"), "rollout_engine": (None, "transformers", "vllm"),
        }
        for name, allowed in choices.items():
            one_of(name, getattr(self, name), allowed)
        for name in ("rollout_batch_size", "group_size", "ppo_epochs", "num_minibatches", "micro_batch_size", "save_every", "max_new_tokens"):
            at_least(name, getattr(self, name), 1)
        for name in ("max_steps", "critic_warmup_steps", "stall_steps", "seed", "eval_every", "shift_rollouts", "beta", "learning_rate", "critic_learning_rate"):
            at_least(name, getattr(self, name), 0)
        for name in ("temperature", "clip_range", "max_grad_norm"):
            positive(name, getattr(self, name))
        for name in ("warmup_ratio", "critic_warmup_ratio"):
            fraction(name, getattr(self, name))
        if not 0 < self.top_p <= 1:
            raise DGPOError(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.vllm_gpu_memory_utilization is not None and not 0 < self.vllm_gpu_memory_utilization < 1:
            raise DGPOError(f"vllm_gpu_memory_utilization must be in (0, 1): training shares the GPU (got {self.vllm_gpu_memory_utilization})")
        if self.save_total_limit is not None:
            at_least("save_total_limit", self.save_total_limit, 1)
        if self.candidate_prompts is not None and self.candidate_prompts < self.rollout_batch_size:
            raise DGPOError(f"candidate_prompts ({self.candidate_prompts}) must be at least rollout_batch_size ({self.rollout_batch_size}): the update picks its prompts from them")
        trackers("report_to", self.report_to or [])
        if self.rollout_engine == "vllm":
            check_vllm_engine()
        if self.algorithm == "grpo" and self.group_size < 2:
            raise DGPOError(f"grpo needs group_size >= 2 to form a baseline (got {self.group_size})")
        if self.algorithm == "gkd" and (self.kl_on == "none" or self.beta == 0):
            raise DGPOError("gkd learns from the teacher term alone: set beta > 0 and kl_on to all (or wrong)")
        if self.guidance == "loss" and self.kl_estimator == "k1":
            raise DGPOError("guidance: loss needs kl_estimator full, forward or k3: k1's gradient is zero in expectation")
        if self.num_minibatches > self.rollout_batch_size * self.group_size:
            raise DGPOError(f"num_minibatches={self.num_minibatches} exceeds the {self.rollout_batch_size * self.group_size} rollouts per step")
        if self.critic_warmup_steps and not self.uses_critic:
            raise DGPOError(f"critic_warmup_steps needs a value model: {self.algorithm} has none (use 0)")

    @property
    def prompts_per_step(self) -> int:
        """Prompts each process rolls out per step (the update may train on fewer: ``candidate_prompts``)."""
        return self.candidate_prompts or self.rollout_batch_size

    @property
    def uses_critic(self) -> bool:
        return self.algorithm == "ppo"

    @property
    def guided(self) -> bool:
        """Whether the teacher's term is used (a teacher must then be given)."""
        return self.beta > 0 and self.kl_on != "none"

    def for_method(self, method: str, **changes: object) -> RLConfig:
        """These settings as ``method`` trains them as a baseline (its defining settings at their first
        value; ``-from-base`` only changes where it starts), as a plain ``RLConfig`` (a subclass's own
        fields, such as the pipeline's, are left behind)."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(RLConfig)}
        return RLConfig(**{**own, **method_settings(method), **changes})


def method_settings(method: str, chosen: dict[str, str | None] | None = None) -> dict[str, str]:
    """The defining settings ``method`` trains with: each one ``chosen`` sets (None: unset) if the method
    allows it, else its first; a chosen value the method does not allow is a one-line error, never
    silently replaced."""
    check_method(method)
    settings = {}
    for name, allowed in RL_METHODS[method.removesuffix(FROM_BASE)].items():
        value = (chosen or {}).get(name)
        if value is not None and value not in allowed:
            raise DGPOError(
                f"rl.{name}: {value} is not how {method} trains (it takes {name} {' or '.join(allowed)}): "
                f"drop rl.{name} or choose a method that trains with it"
            )
        settings[name] = allowed[0] if value is None else value
    return settings


def check_vllm_engine() -> None:
    """Refuse ``rollout_engine: vllm`` before anything runs where it cannot: without the extra, or
    where torch sees no CUDA GPU (the check imports torch, as only this engine's users pay for)."""
    from dgpo_agent.backends.vllm_engine import require_vllm

    require_vllm()
    import torch

    if not torch.cuda.is_available():
        raise DGPOError("rollout_engine vllm generates on a CUDA GPU and torch sees none: use rollout_engine transformers")


def check_method(method: str) -> None:
    if method.removesuffix(FROM_BASE) not in RL_METHODS:
        choices = ", ".join([*RL_METHODS, *(m + FROM_BASE for m in RL_METHODS)])
        raise DGPOError(f"unknown RL method {method!r}: choose from {choices}")
