"""DGPO's objective as pure tensor functions (DGPO paper §4.2), testable with hand-made tensors.

Every per-token tensor is (B, L) over the positions of the full sequence (prompt + response): index
t holds the value for token t. ``mask`` is 1 on tokens the model generated and 0 on the prompt, on
retrieved / corrective text the environment inserted, and on padding. Retrieved tokens therefore
never carry a reward, a KL penalty, an advantage or a loss term.

For a rollout whose score is below the threshold (wrong, malformed or unanswered), each model token
gets the teacher's term β·kl_t: a single-sample estimate of KL(π_θ ‖ π_teacher) (k1, the reference
implementation's, or k3) or the exact KL over the vocabulary in either direction. It enters the
reward (the reference implementation), the token's advantage or the loss (``rl_config.RLConfig``).
Under DGPO's selective mask (``kl_on: wrong``) correct rollouts get no KL term at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

KLEstimator = Literal["k1", "k3", "full", "forward"]
EXACT: tuple[KLEstimator, ...] = ("full", "forward")  # the estimators computed over the whole vocabulary
KLOn = Literal["wrong", "all", "none"]


# ------------------------------------------------------------------------------------------- log-probs


def gather_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[ids], one position at a time along the last axis: (…, V), (…) → (…)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last axis."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------------------- teacher KL


def sampled_kl(logp: torch.Tensor, teacher_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_teacher) from the sampled tokens' log-probs.

    k1 = log π_θ − log π_T (the reference code's ``kl_penalty=kl``; unbiased, can be negative);
    k3 = r − log r − 1 with r = π_T/π_θ (non-negative, lower variance).
    """
    diff = logp - teacher_logp
    if estimator == "k1":
        return diff
    if estimator == "k3":
        return torch.expm1(-diff) + diff
    raise ValueError(f"sampled_kl takes k1 or k3, not {estimator!r}: use full_kl for full and forward")


def full_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, estimator: KLEstimator = "full") -> torch.Tensor:
    """The exact KL at each position, summed over the vocabulary: (…, V) → (…).

    ``full``: KL(π_θ ‖ π_teacher), the reverse direction the reference code estimates (mode-seeking:
    its pull on a token is proportional to the student's own probability of it). ``forward``:
    KL(π_teacher ‖ π_θ), the cold start's distillation loss on the student's own tokens
    (mass-covering: it raises the teacher's tokens even where the student gives them almost nothing,
    which is what a student far from the teacher needs).
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    logq = torch.log_softmax(teacher_logits.float(), dim=-1)
    if estimator == "full":
        return (logp.exp() * (logp - logq)).sum(-1)
    if estimator == "forward":
        return (logq.exp() * (logq - logp)).sum(-1)
    raise ValueError(f"full_kl takes full or forward, not {estimator!r}: use sampled_kl for k1 and k3")


def penalised_rows(scores: torch.Tensor, threshold: float, kl_on: KLOn = "wrong") -> torch.Tensor:
    """1.0 for each rollout that receives the KL penalty: score < threshold ("wrong", DGPO's selective
    mask), every rollout ("all", the uniform-KL ablation) or none."""
    if kl_on == "wrong":
        return (scores < threshold).float()
    if kl_on == "all":
        return torch.ones_like(scores, dtype=torch.float)
    if kl_on == "none":
        return torch.zeros_like(scores, dtype=torch.float)
    raise ValueError(f"kl_on must be wrong, all or none, not {kl_on!r}")


def kl_penalty(kl: torch.Tensor, mask: torch.Tensor, penalised: torch.Tensor, beta: float) -> torch.Tensor:
    """β·kl_t on the model tokens of penalised rollouts, 0 elsewhere (subtracted from the reward)."""
    return beta * kl * mask * penalised.unsqueeze(-1)


# ------------------------------------------------------------------------------------------- rewards


def last_token(mask: torch.Tensor) -> torch.Tensor:
    """One-hot (B, L) at each row's last model token (all zeros for a row without one)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values
    return (positions == last.unsqueeze(1)).float() * mask


def token_rewards(scores: torch.Tensor, mask: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """The outcome score on the last model token minus the per-token KL penalty."""
    return scores.unsqueeze(1).float() * last_token(mask) - penalty


# ------------------------------------------------------------------------------------------- advantages


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, lam: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the model tokens; returns (advantages, returns).

    The agent's time steps are its own tokens: an environment token is a transition, not a step, so
    the next value of a model token is the value of the next *model* token (0 after the last). With
    γ = λ = 1 (the paper) this equals GAE over the whole response, since values telescope away.
    ``rewards`` must be 0 off the mask.
    """
    adv = torch.zeros_like(rewards, dtype=torch.float)
    next_value = torch.zeros(rewards.shape[0], device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    on = mask.bool()
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step = delta + gamma * lam * next_adv
        adv[:, t] = torch.where(on[:, t], step, 0.0)
        next_value = torch.where(on[:, t], values[:, t].float(), next_value)
        next_adv = torch.where(on[:, t], step, next_adv)
    return adv, (adv + values) * mask


def reward_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_{k ≥ t} r_k over the model tokens (GAE with no critic and γ = λ = 1)."""
    return gae(rewards, torch.zeros_like(rewards, dtype=torch.float), mask)[0]


def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's critic-free baseline: each score minus its group's mean (over ``group_size`` consecutive
    rollouts of one prompt), divided by the group's standard deviation when ``scale``."""
    groups = scores.float().view(-1, group_size)
    centred = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (groups.std(dim=1, keepdim=True) + eps)
    return centred.view(-1)


def informative_groups(scores: torch.Tensor, group_size: int, keep: int, threshold: float, generator: torch.Generator) -> torch.Tensor:
    """Row indices, in rollout order, of ``keep`` groups (``group_size`` consecutive rollouts of one
    prompt): first those whose rollouts disagree, where the reward contrasts two answers to one
    question, then others drawn at random. A rollout is wrong below ``threshold``, as for DGPO's
    teacher term.

    DAPO's dynamic sampling keeps only groups that disagree, rolling out more until it has enough;
    this fills the rest at random instead, so the update sees right and wrong answers in the
    proportions the policy gives them (ranking the all-wrong groups next, which DGPO's teacher term
    guides, made the updates mostly wrong rollouts and lost on dev: bench/README.md).
    With one rollout a question no group disagrees, and the pick is uniform.
    """
    wrong = (scores.view(-1, group_size) < threshold).cpu()
    disagree = wrong.any(dim=1) & ~wrong.all(dim=1)
    shuffled = torch.randperm(disagree.numel(), generator=generator)
    chosen = shuffled[torch.argsort((~disagree[shuffled]).int(), stable=True)][:keep].sort().values
    return (chosen.unsqueeze(1) * group_size + torch.arange(group_size)).flatten().to(scores.device)


def whiten(
    x: torch.Tensor, mask: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t, eps: float = 1e-8
) -> torch.Tensor:
    """(x − mean)/std over the masked entries, 0 elsewhere. ``total`` sums a tensor over processes,
    so the statistics are those of the global batch."""
    m = mask.float()
    sums = total(torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()]))
    count = sums[2].clamp(min=1)
    mean = sums[0] / count
    var = (sums[1] / count - mean**2).clamp(min=0) * count / (count - 1).clamp(min=1)
    return (x - mean) * torch.rsqrt(var + eps) * m


def rewards_contrast(
    scores: torch.Tensor, token_penalty: torch.Tensor, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
) -> bool:
    """Whether a batch's rewards can tell one action from another: some rollouts scored differently, or
    a per-token term enters the reward. ``total`` sums over processes, so the answer is the global batch's.

    Without contrast every return is the same, so GAE's advantage is only the critic's error
    (A_t = R − V(s_t)), and whitening would blow that noise up to a full-size signal."""
    s = scores.double()
    sums = total(torch.stack([torch.ones_like(s).sum(), s.sum(), (s * s).sum(), token_penalty.double().abs().sum()]))
    count = sums[0].clamp(min=1)
    variance = sums[2] / count - (sums[1] / count) ** 2
    return bool(variance > 1e-12 or sums[3] > 0)


# ------------------------------------------------------------------------------------------- losses


def clipped_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO-clip per token: max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) with ρ = π_θ/π_old; also returns whether
    the clipped branch was taken. Mask it: only model tokens may enter the mean."""
    ratio = torch.exp(logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    return torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float) -> torch.Tensor:
    """½·max((V − R)², (V_old + clip(V − V_old, ±ε) − R)²) per token (veRL's critic loss)."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the masked entries; 0 when there are none (never NaN)."""
    m = mask.float()
    return (x * m).sum() / m.sum().clamp(min=1)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Index next-token outputs by the token they score: (B, L−1) outputs at positions 0 … L−2 → (B, L),
    with 0 for token 0. A causal LM's logits at position t − 1 score token t, and a critic's output
    there is the value of the state in which token t is chosen."""
    return F.pad(x, (1, 0))
