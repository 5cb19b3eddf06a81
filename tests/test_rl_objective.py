"""DGPO's objective pinned on hand-made tensors: which tokens get KL, which rollouts, and how much."""

from __future__ import annotations

import math

import pytest
import torch

from dgpo_agent.training import rl_objective as obj

BETA = 0.001

# Two rollouts over 8 positions: prompt (0-1), model tokens, retrieved tokens (R), model tokens, padding.
#            P  P  M  M  R  R  M  pad
MASK = torch.tensor([
    [0, 0, 1, 1, 0, 0, 1, 0],   # correct rollout
    [0, 0, 1, 1, 0, 0, 1, 1],   # wrong rollout
], dtype=torch.float)
RETRIEVED = torch.tensor([[0, 0, 0, 0, 1, 1, 0, 0]] * 2, dtype=torch.bool)
SCORES = torch.tensor([1.0, 0.0])
LOGP = torch.tensor([[0.0, 0.0, -1.0, -2.0, -0.5, -0.7, -0.3, 0.0], [0.0, 0.0, -0.4, -1.5, -0.2, -0.9, -2.0, -1.0]])
TEACHER = torch.tensor([[0.0, 0.0, -0.5, -1.0, -3.0, -4.0, -0.1, 0.0], [0.0, 0.0, -1.4, -0.5, -5.0, -6.0, -1.0, -0.2]])


def dgpo_penalty(estimator="k1", kl_on="wrong"):
    kl = obj.sampled_kl(LOGP, TEACHER, estimator)
    return obj.kl_penalty(kl, MASK, obj.penalised_rows(SCORES, 0.1, kl_on), BETA)


def test_correct_rollouts_get_no_kl():
    penalty = dgpo_penalty()
    assert torch.all(penalty[0] == 0)
    assert penalty[1].abs().sum() > 0


def test_penalty_is_beta_times_student_minus_teacher_logprob_on_model_tokens():
    penalty = dgpo_penalty()
    model = MASK[1].bool()
    assert torch.allclose(penalty[1][model], BETA * (LOGP[1] - TEACHER[1])[model])
    rewards = obj.token_rewards(SCORES, MASK, penalty)
    # The correct rollout's reward is exactly its score on its last model token.
    assert rewards[0].tolist() == [0, 0, 0, 0, 0, 0, 1.0, 0]
    assert torch.allclose(rewards[1], -penalty[1])


def test_retrieved_tokens_get_no_kl_and_no_policy_gradient():
    for estimator in ("k1", "k3"):
        for kl_on in ("wrong", "all"):
            assert torch.all(dgpo_penalty(estimator, kl_on)[RETRIEVED] == 0)
    logp = LOGP.clone().requires_grad_(True)
    rewards = obj.token_rewards(SCORES, MASK, dgpo_penalty())
    values = torch.randn(2, 8)
    advantages, _ = obj.gae(rewards, values, MASK)
    advantages = obj.whiten(advantages, MASK)
    assert torch.all(advantages[RETRIEVED] == 0)
    per_token, _ = obj.clipped_policy_loss(logp, LOGP.detach() + 0.05, advantages, clip=0.2)
    obj.masked_mean(per_token, MASK).backward()
    assert torch.all(logp.grad[RETRIEVED] == 0)
    assert torch.all(logp.grad[MASK.bool()] != 0)


def test_kl_on_ablations_and_threshold():
    assert obj.penalised_rows(torch.tensor([1.0, 0.0, 0.05]), 0.1, "wrong").tolist() == [0, 1, 1]
    assert obj.penalised_rows(SCORES, 0.1, "all").tolist() == [1, 1]
    assert torch.all(dgpo_penalty(kl_on="none") == 0)
    assert torch.all(dgpo_penalty(kl_on="all")[0][MASK[0].bool()] != 0)


def test_k3_is_nonnegative_and_full_kl_is_exact():
    assert torch.all(obj.sampled_kl(LOGP, TEACHER, "k3") >= 0)
    p, q = torch.tensor([0.7, 0.2, 0.1]), torch.tensor([0.2, 0.5, 0.3])
    exact = sum(pi * math.log(pi / qi) for pi, qi in zip(p.tolist(), q.tolist()))
    assert obj.full_kl(p.log(), q.log()).item() == pytest.approx(exact, rel=1e-5)
    forward = sum(qi * math.log(qi / pi) for pi, qi in zip(p.tolist(), q.tolist()))
    assert obj.full_kl(p.log(), q.log(), "forward").item() == pytest.approx(forward, rel=1e-5)


def test_only_the_forward_kl_pulls_up_a_teacher_token_the_student_almost_never_gives():
    """A student far from its teacher: the teacher's likeliest token has probability ~1e-4 under the
    student. The reverse KL's gradient on a logit is proportional to the student's own probability, so
    it barely raises that token; the forward KL's is π_θ − π_T, a pull of almost the teacher's mass."""
    teacher = torch.tensor([6.0, 0.0, 0.0, 0.0])
    pulls = {}
    for estimator in ("full", "forward"):
        student = torch.tensor([-4.0, 5.0, 0.0, 0.0], requires_grad=True)
        obj.full_kl(student, teacher, estimator).backward()
        pulls[estimator] = -student.grad[0].item()  # how fast descent raises the teacher's token
    assert pulls["forward"] > 0.9 and 0 < pulls["full"] < 0.01
    with pytest.raises(ValueError, match="full or forward"):
        obj.full_kl(teacher, teacher, "k1")


def test_gae_with_unit_gamma_lambda_is_return_minus_value_skipping_retrieved_tokens():
    rewards = torch.tensor([[0.0, 0.0, -0.1, -0.2, 0.0, 0.0, 1.0, 0.0]])
    values = torch.tensor([[9.0, 9.0, 0.5, 0.4, 7.0, 7.0, 0.3, 9.0]])
    mask = MASK[:1]
    adv, returns = obj.gae(rewards, values, mask)
    expected_returns = torch.tensor([[0, 0, 0.7, 0.8, 0, 0, 1.0, 0]])
    assert torch.allclose(returns, expected_returns)
    assert torch.allclose(adv, (expected_returns - values) * mask)
    # With λ < 1 the retrieved tokens' values still play no part: the next state is the next model token.
    adv_half, _ = obj.gae(rewards, values, mask, gamma=1.0, lam=0.5)
    other = values.clone()
    other[RETRIEVED[:1]] = -100.0
    assert torch.allclose(adv_half, obj.gae(rewards, other, mask, gamma=1.0, lam=0.5)[0])


def test_group_advantages_and_reward_to_go():
    adv = obj.group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), group_size=3)
    assert adv[:3].sum().abs() < 1e-6 and adv[0] > 0 > adv[1]
    assert adv[3] < 0 < adv[4]
    penalty = torch.tensor([[0.0, 0.0, 0.1, 0.2, 0.0, 0.0, 0.3, 0.0]])
    assert torch.allclose(obj.reward_to_go(penalty, MASK[:1]), torch.tensor([[0, 0, 0.6, 0.5, 0, 0, 0.3, 0]]))


def test_informative_groups_keeps_disagreeing_groups_first_then_others_at_random_whole_and_in_order():
    # Six questions × 2 rollouts: solved, all wrong, disagreeing, solved, disagreeing, all wrong.
    scores = torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    pick = lambda keep, seed=0: obj.informative_groups(scores, 2, keep, 0.1, torch.Generator().manual_seed(seed)).tolist()  # noqa: E731
    assert pick(2) == [4, 5, 8, 9]  # both disagreeing groups, each whole, in rollout order
    filled = {tuple(pick(3, seed)) for seed in range(40)}
    assert filled == {tuple(sorted([4, 5, 8, 9, 2 * g, 2 * g + 1])) for g in (0, 1, 3, 5)}  # then any other group
    assert pick(6) == list(range(12))
    # One rollout a question: no group disagrees, so the pick is uniform.
    alone = torch.tensor([1.0, 0.0, 1.0, 0.0])
    assert {tuple(obj.informative_groups(alone, 1, 2, 0.1, torch.Generator().manual_seed(seed)).tolist()) for seed in range(40)} == {
        (0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)
    }


def test_clipping_and_value_loss():
    old = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(1.5), math.log(0.5)]])
    loss, clipped = obj.clipped_policy_loss(logp, old, torch.tensor([[1.0, -1.0]]), clip=0.2)
    assert loss[0].tolist() == pytest.approx([-1.2, 0.8])
    assert clipped.tolist() == [[1.0, 1.0]]
    value = obj.clipped_value_loss(torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([1.0]), clip=0.5)
    assert value.item() == pytest.approx(0.5 * max((2 - 1) ** 2, (0.5 - 1) ** 2))


def test_rewards_contrast_needs_different_scores_or_a_per_token_reward():
    none = torch.zeros(2, 8)
    assert not obj.rewards_contrast(torch.zeros(4), none)
    assert not obj.rewards_contrast(torch.ones(4), none)
    assert obj.rewards_contrast(torch.tensor([0.0, 0.0, 1.0, 0.0]), none)
    assert obj.rewards_contrast(torch.zeros(2), dgpo_penalty())
    # Over processes: each process's scores are all equal, the global batch's are not.
    other = torch.tensor([4.0, 4.0, 4.0, 0.0])  # another process's count, Σs, Σs², Σ|penalty|
    assert obj.rewards_contrast(torch.zeros(4), none, total=lambda t: t + other)


def test_whiten_and_token_alignment():
    x = torch.tensor([[1.0, 2.0, 99.0], [3.0, 4.0, -99.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    w = obj.whiten(x, mask)
    assert w[:, 2].tolist() == [0, 0]
    assert obj.masked_mean(w, mask).abs() < 1e-6
    assert obj.to_tokens(torch.tensor([[5.0, 6.0]])).tolist() == [[0.0, 5.0, 6.0]]
    assert obj.last_token(MASK).argmax(1).tolist() == [6, 7]
