"""The RL trainer on tiny models: masks from rollouts, logged metrics, baselines, checkpoints and an
exact resume (in process, after kill -9, and under ``accelerate launch`` with two processes)."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.backends.transformers import TransformersPolicy
from dgpo_agent.errors import DGPOError
from dgpo_agent.rollout import AgentConfig, TokenTrajectory, run_batch, token_trajectory
from dgpo_agent.training import rl_objective as obj
from dgpo_agent.training.callbacks import METRICS
from dgpo_agent.training.config import load_run_file
from dgpo_agent.training.rl import RLTrainer, _Scored, check_cpu_launch, checkpoints, pack, run_file
from dgpo_agent.training.rl_config import RLConfig
from tests.fakes import KeywordRetriever, ScriptedPolicy
from tests.models import tiny_qwen2, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [
    {"id": "a", "question": "Who founded Kreaxse Labs", "golden_answers": ["Zentrath Doglassoun"]},
    {"id": "b", "question": "Where was Zentrath Doglassoun born", "golden_answers": ["Vellor"]},
    {"id": "c", "question": "What is Kreaxse Labs", "golden_answers": ["a lab"]},
]
AGENT = AgentConfig(max_turns=2, top_k=2)
LOGGED = (
    "reward", "trained_reward", "invalid_rate", "search_count", "empty_query_rate", "answered", "kl_wrong", "penalised_frac", "approx_kl",
    "entropy", "response_length", "step_s", "teacher_s", "rollout_s",
)


pytestmark = pytest.mark.usefixtures("one_thread")


def rl_config(out: Path, **kwargs) -> RLConfig:
    defaults = {
        "output_dir": str(out), "rollout_batch_size": 2, "micro_batch_size": 2, "num_minibatches": 1, "max_steps": 2,
        "save_every": 1, "learning_rate": 1e-3, "critic_learning_rate": 1e-3, "warmup_ratio": 0.0, "critic_warmup_ratio": 0.0,
        "max_new_tokens": 12, "guidance": "reward", "beta": 0.001, "kl_estimator": "k1",  # the reference code's teacher term
    }
    return RLConfig(**{**defaults, **kwargs})


def trainer(tok, config: RLConfig, teacher: bool = True) -> RLTrainer:
    student = copy.deepcopy(tiny_qwen2(tok))
    guide = tiny_qwen2(tok, seed=1, hidden=96) if teacher else None
    return RLTrainer(student, tok, RECORDS, KeywordRetriever(), AGENT, config, teacher=guide)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def test_pack_keeps_retrieved_tokens_in_the_input_but_out_of_the_mask():
    traj = TokenTrajectory(prompt_ids=[1, 2], response_ids=[3, 4, 5, 6, 7], env_mask=[0, 0, 1, 1, 0], logprobs=None)
    short = TokenTrajectory(prompt_ids=[1], response_ids=[8], env_mask=[0], logprobs=None)
    batch = pack([traj, short], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7], [1, 8, 0, 0, 0, 0, 0]]
    assert batch.mask.tolist() == [[0, 0, 1, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0, 0]]
    assert batch.attention_mask.tolist() == [[1] * 7, [1, 1, 0, 0, 0, 0, 0]]


def test_a_cpu_launch_that_would_run_one_process_is_refused():
    with pytest.raises(DGPOError, match="--multi_gpu"):
        check_cpu_launch({"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1"})
    check_cpu_launch({"ACCELERATE_USE_CPU": "True"})
    check_cpu_launch({"ACCELERATE_USE_CPU": "1", "MASTER_ADDR": "127.0.0.1", "WORLD_SIZE": "2"})


def test_the_run_file_is_read_by_the_pipelines_loader(tmp_path):
    """One loader for every settings file: YAML 1.1's 3e-4 (a string) still reaches RLConfig as a number,
    and a misspelt or missing key is named the way a pipeline config names it."""
    path = tmp_path / "run.yaml"
    path.write_text("model: m\ntrain_file: t\nstore: s\nrl:\n  learning_rate: 3e-4\n  beta: 1e-3\n")
    run = load_run_file(path)
    assert isinstance(run.rl, RLConfig) and run.rl.learning_rate == 3e-4 and run.collection == "dgpo"
    path.write_text("model: m\ntrain_file: t\nstore: s\nrl:\n  beta: lots\n")
    with pytest.raises(DGPOError, match="rl.beta must be a number"):
        load_run_file(path)
    path.write_text("model: m\ntrain_file: t\nstore: s\nrl:\n  lr: 1e-3\n")
    with pytest.raises(DGPOError, match=r"unknown setting\(s\) rl.lr: the valid ones in rl are"):
        load_run_file(path)
    path.write_text("model: m\nstore: s\n")
    with pytest.raises(DGPOError, match="missing setting.s. train_file"):
        load_run_file(path)


def test_config_rejects_bad_settings():
    with pytest.raises(DGPOError, match="group_size"):
        RLConfig(algorithm="grpo", group_size=1)
    with pytest.raises(DGPOError, match="kl_estimator"):
        RLConfig(kl_estimator="k2")
    with pytest.raises(DGPOError, match="guidance"):
        RLConfig(guidance="prompt")
    with pytest.raises(DGPOError, match="k1's gradient"):
        RLConfig(guidance="loss", kl_estimator="k1")
    with pytest.raises(DGPOError, match="gkd learns from the teacher term alone"):
        RLConfig(algorithm="gkd", kl_on="none")
    with pytest.raises(DGPOError, match="top_p"):
        RLConfig(top_p=0.0)
    with pytest.raises(DGPOError, match="rollout_engine must be one of None, transformers, vllm"):
        RLConfig(rollout_engine="sglang")
    with pytest.raises(DGPOError, match=r"vllm_gpu_memory_utilization must be in \(0, 1\): training shares the GPU"):
        RLConfig(vllm_gpu_memory_utilization=1.0)


def test_gkd_needs_a_teacher(tok, tmp_path):
    with pytest.raises(DGPOError, match="pass a teacher"):
        trainer(tok, rl_config(tmp_path, algorithm="gkd", kl_on="all"), teacher=False)


def test_dgpo_steps_log_every_metric_and_checkpoint(tok, tmp_path):
    config = rl_config(tmp_path, kl_on="all", kl_estimator="full")
    last = trainer(tok, config).train()
    logged = rows(tmp_path)
    assert [r["step"] for r in logged] == [1, 2] and logged[-1] == last
    for key in LOGGED:
        assert isinstance(last[key], float), key
    assert last["penalised_frac"] == 1.0 and last["kl_wrong"] > 0 and last["vf_loss"] >= 0
    # One checkpoint per step, pruned to the last two; the teacher is never part of one.
    assert [p.name for p in checkpoints(tmp_path)] == ["step-0000001", "step-0000002"]
    assert sorted(p.name for p in checkpoints(tmp_path)[-1].glob("model*.safetensors")) == ["model.safetensors", "model_1.safetensors"]


def test_selective_kl_penalises_only_wrong_rollouts(tok, tmp_path):
    # Gold answers the random model never gives: every rollout is wrong, so every one is penalised.
    last = trainer(tok, rl_config(tmp_path, max_steps=1)).train()
    assert last["wrong_frac"] == last["penalised_frac"] == 1.0


def test_candidate_prompts_train_on_the_groups_with_most_to_learn_and_log_every_rollout(tok, tmp_path):
    """Dynamic sampling: all three questions are rolled out, the update trains on the one whose two
    rollouts disagree, and the logged rollout metrics cover all six rollouts."""
    rl = trainer(tok, rl_config(tmp_path, max_steps=1, rollout_batch_size=1, group_size=2, candidate_prompts=3))
    rolled, trained = [], []
    rollouts, score = rl.rollouts, rl._score

    def scripted_scores(step):  # solved, disagreeing, all wrong
        records, states, _ = rollouts(step)
        rolled.extend(token_trajectory(s) for s in states)
        return records, states, torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])

    rl.rollouts = scripted_scores
    rl._score = lambda batch, scores: trained.append((batch, scores)) or score(batch, scores)
    logged = rl.train()
    (batch, scores), = trained
    assert scores.tolist() == [1.0, 0.0] and torch.equal(batch.input_ids, pack(rolled[2:4], rl.pad_id).input_ids)
    assert logged["trained_reward"] == 0.5 and logged["data_position"] == 3
    assert logged["response_length"] == pytest.approx(sum(sum(t.loss_mask) for t in rolled) / 6, abs=1e-5)


@pytest.mark.parametrize("kl_on, estimator, teacher_rows", [("wrong", "k1", [1, 3]), ("none", "k3", [1, 3]), ("all", "k1", [0, 1, 2, 3]), ("wrong", "full", [1, 3]), ("all", "forward", [0, 1, 2, 3])])
def test_the_teacher_runs_only_on_the_rollouts_whose_kl_is_used(tok, tmp_path, kl_on, estimator, teacher_rows):
    """Correct rollouts get no KL, so the teacher's forward pass skips them (all rollouts under kl_on: all)."""
    rl = trainer(tok, rl_config(tmp_path, kl_on=kl_on, kl_estimator=estimator, micro_batch_size=1))
    trajectories = [TokenTrajectory([1, 2, 3], [4 + i, 5, 6, 7], [0, 1, 1, 0], None) for i in range(4)]
    batch = pack(trajectories, pad_id=0)
    seen = []
    hook = rl.teacher.register_forward_pre_hook(lambda _, args, kwargs: seen.append(kwargs["input_ids"][0, 3].item() - 4), with_kwargs=True)
    with torch.no_grad():
        scored = rl._score(batch, torch.tensor([1.0, 0.0, 1.0, 0.0]))
    hook.remove()
    assert seen == teacher_rows and scored.teacher_s > 0
    assert scored.kl[[i for i in range(4) if i not in teacher_rows]].abs().sum() == 0
    assert (scored.kl[teacher_rows] * (1 - batch.mask[teacher_rows])).abs().sum() == 0  # retrieved and prompt tokens: none
    assert (scored.kl[teacher_rows] != 0).sum() == batch.mask[teacher_rows].sum()


def test_scoring_in_length_sorted_micro_batches_gives_each_row_what_it_gets_alone(tok, tmp_path):
    """Micro-batches group rows by length and pad only to their own longest row; every row's log-probs,
    entropy, values and teacher KL must still land on that row, as if it were scored alone."""
    rl = trainer(tok, rl_config(tmp_path, kl_on="all", micro_batch_size=2))
    lengths = [6, 2, 9, 4, 7]  # out of order, so sorting moves rows across micro-batches
    trajectories = [TokenTrajectory([1, 2], [5 + i + j for j in range(n)], [0] * n, None) for i, n in enumerate(lengths)]
    batch, scores = pack(trajectories, pad_id=0), torch.zeros(len(lengths))
    with torch.no_grad():
        together = rl._score(batch, scores)
        for row, t in enumerate(trajectories):
            alone = rl._score(pack([t], pad_id=0), scores[:1])
            width = alone.logp.shape[1]
            for name in ("logp", "entropy", "values", "kl"):
                torch.testing.assert_close(getattr(together, name)[row, :width], getattr(alone, name)[0], msg=f"{name}, row {row}")
                assert getattr(together, name)[row, width:].abs().sum() == 0, name


def test_grpo_baseline_without_teacher(tok, tmp_path):
    config = rl_config(tmp_path, algorithm="grpo", group_size=2, max_steps=1)
    last = trainer(tok, config, teacher=False).train()
    assert last["kl_wrong"] is None and last["penalised_frac"] == 0.0
    assert "vf_loss" not in last
    assert len(list(checkpoints(tmp_path)[-1].glob("model*.safetensors"))) == 1  # no critic


def update_on(rl: RLTrainer, responses: list[list[int]], env_mask: list[int], scores: list[float]) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Per-row mean log-prob of the model tokens of four fixed rollouts (two prompts × two responses)
    before and after three RL updates on them; and the batch."""
    trajectories = [TokenTrajectory([1, 2, 3 + i // 2], response, env_mask, None) for i, response in enumerate(responses)]
    batch, scores = pack(trajectories, pad_id=0), torch.tensor(scores)

    def row_logp() -> torch.Tensor:
        with torch.no_grad():
            logp = rl._score(batch, scores).logp
        return (logp * batch.mask).sum(1) / batch.mask.sum(1)

    before = row_logp()
    for _ in range(3):
        with torch.no_grad():
            scored = rl._score(batch, scores)
        advantages, returns, penalised = rl._advantages(batch, scores, scored)
        rl._update(batch, scored, advantages, returns, penalised, step=1)
    return before, row_logp(), batch


# Plain updates: no entropy bonus or weight decay, which would move a tiny model on their own.
PLAIN = {"entropy_coef": 0.0, "weight_decay": 0.0, "micro_batch_size": 4, "learning_rate": 1e-2, "group_size": 2}


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_an_update_raises_rewarded_rollouts_and_lowers_the_others(tok, tmp_path, algorithm):
    """The sign of the whole path (advantage → clipped loss → optimizer), which the objective's unit
    tests cannot see: the rewarded response of each prompt gains probability, the other loses it."""
    rl = trainer(tok, rl_config(tmp_path, algorithm=algorithm, **PLAIN), teacher=False)
    responses = [[10 + i, 11, 30, 12 + i, 13] for i in range(4)]
    before, after, _ = update_on(rl, responses, [0, 0, 1, 0, 0], [1.0, 0.0, 0.0, 1.0])
    change = after - before
    assert change[[0, 3]].min() > 0 > change[[1, 2]].max()


def test_ppo_leaves_the_policy_alone_when_every_rollout_scored_the_same(tok, tmp_path):
    """A batch where every rollout scored the same tells no action from another: its task advantage is
    0, where whitening the critic's error (A_t = −V(s_t)) used to push the policy at full size."""
    rl = trainer(tok, rl_config(tmp_path, **PLAIN), teacher=False)
    torch.nn.init.normal_(rl.critic.score.weight, std=0.1)  # a critic that has learnt something
    responses = [[10 + i, 11, 30, 12 + i, 13] for i in range(4)]
    before, after, _ = update_on(rl, responses, [0, 0, 1, 0, 0], [0.0] * 4)
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize(
    "algorithm, guidance, estimator",
    [("grpo", "reward", "k1"), ("grpo", "advantage", "k1"), ("grpo", "loss", "full"), ("gkd", "advantage", "k1"), ("gkd", "loss", "k3"), ("gkd", "loss", "forward")],
)
def test_the_teacher_term_pulls_wrong_rollouts_towards_the_teacher(tok, tmp_path, algorithm, guidance, estimator):
    """Four wrong one-token rollouts, so the teacher's term is the only signal, in whichever form it
    enters (reward, per-token advantage, or loss). On the sampled tokens (k1, k3) each token's log-prob
    moves towards the teacher's; the exact KL over the vocabulary (in the direction used) falls at every position."""
    config = rl_config(tmp_path, algorithm=algorithm, beta=1.0, guidance=guidance, kl_estimator=estimator, kl_on="all", **PLAIN)
    rl = trainer(tok, config)
    batch = pack([TokenTrajectory([1, 2, 3 + i // 2], [10 + i], [0], None) for i in range(4)], pad_id=0)

    def exact_kl() -> torch.Tensor:
        with torch.no_grad():
            logits = rl._forward_logits(rl.model, batch), rl._forward_logits(rl.teacher, batch)
        return obj.full_kl(*logits, estimator if estimator in obj.EXACT else "full")

    kl_before = exact_kl()
    before, after, batch = update_on(rl, [[10 + i] for i in range(4)], [0], [0.0] * 4)
    if estimator in obj.EXACT:
        assert (exact_kl() < kl_before).all()
        return
    with torch.no_grad():
        teacher = rl._token_logprobs(rl._forward_logits(rl.teacher, batch), batch).sum(1)
    assert ((after - teacher).abs() < (before - teacher).abs()).all()


def first_token_advantages(rl: RLTrainer, lengths: list[int], kl: float, scores: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each rollout's advantage on its first model token, and all advantages, for wrong rollouts of
    the given lengths whose per-token KL to the teacher is ``kl`` everywhere."""
    trajectories = [TokenTrajectory([1, 2], [5] * n, [0] * n, None) for n in lengths]
    batch = pack(trajectories, pad_id=0)
    zeros = torch.zeros_like(batch.mask)
    values = zeros if rl.config.uses_critic else None
    scored = _Scored(logp=zeros, entropy=zeros, values=values, kl=kl * batch.mask, teacher_logp=zeros, teacher_s=0.0)
    advantages, _, _ = rl._advantages(batch, torch.tensor(scores), scored)
    return advantages[:, 2], advantages


@pytest.mark.parametrize("guidance", ["reward", "advantage"])
def test_only_a_teacher_term_in_the_reward_lets_a_shorter_wrong_rollout_pay_less(tok, tmp_path, guidance):
    """In the reward, the teacher's penalty is summed over every later token, so a rollout pays for its
    length rather than for how unlike the teacher each token is; as a per-token advantage, two
    rollouts with the same KL per token get the same signal on every token, whatever their length."""
    rl = trainer(tok, rl_config(tmp_path, algorithm="gkd", kl_on="all", beta=1.0, guidance=guidance))
    first, advantages = first_token_advantages(rl, [2, 8], kl=0.5, scores=[0.0, 0.0])
    if guidance == "reward":
        assert first.tolist() == pytest.approx([-1.0, -4.0])
    else:
        assert first.tolist() == [-0.5, -0.5]
        assert torch.equal(advantages, -0.5 * pack([TokenTrajectory([1, 2], [5] * n, [0] * n, None) for n in (2, 8)], 0).mask)


def test_dgpo_adds_the_teacher_term_to_each_wrong_tokens_ppo_advantage(tok, tmp_path):
    """guidance: advantage leaves PPO's task advantages as they are and subtracts β·kl_t from each model
    token of the wrong rollouts only."""
    lengths, scores = [3, 5, 4], [1.0, 0.0, 0.0]
    guided = trainer(tok, rl_config(tmp_path / "a", beta=0.3, guidance="advantage"))
    plain = trainer(tok, rl_config(tmp_path / "b", beta=0.0))
    _, with_teacher = first_token_advantages(guided, lengths, 0.5, scores)
    _, without = first_token_advantages(plain, lengths, 0.5, scores)
    mask = pack([TokenTrajectory([1, 2], [5] * n, [0] * n, None) for n in lengths], 0).mask
    expected = without - 0.3 * 0.5 * mask * torch.tensor([0.0, 1.0, 1.0]).unsqueeze(1)
    torch.testing.assert_close(with_teacher, expected)


def test_the_first_step_trains_at_the_warm_up_learning_rate_it_logs(tok, tmp_path):
    """With warm-up, step 1 trains at lr/W, not 0 (the schedule used to start at 0 and step after the
    update, so the first step did nothing and the logged lr was the next step's)."""
    rl = trainer(tok, rl_config(tmp_path, max_steps=4, warmup_ratio=1.0, learning_rate=1e-3, critic_warmup_ratio=1.0))
    before = [p.detach().clone() for p in rl.model.parameters()]
    first = rl.train_step(1)
    assert first["lr"] == pytest.approx(1e-3 / 4)
    assert any(not torch.equal(a, b) for a, b in zip(before, rl.model.parameters(), strict=True))
    assert rl.train_step(2)["lr"] == pytest.approx(1e-3 / 2)


@pytest.mark.parametrize("kind", [None, "cosine"])
def test_after_the_warm_up_the_learning_rate_stays_or_decays_on_a_cosine(tok, tmp_path, kind):
    """Steps train at the lr they log: 1/W, 2/W, … of it in the warm-up, then all of it (the default),
    or under ``cosine`` all of it at the first step after the warm-up and less at each later one,
    never 0."""
    rl = trainer(tok, rl_config(tmp_path, max_steps=5, warmup_ratio=0.4, learning_rate=1e-3, lr_scheduler_type=kind))
    lrs = [rl.train_step(step)["lr"] / 1e-3 for step in range(1, 6)]
    # Warm-up W = 2 steps; the cosine's three steps after it sit at 0, 1/3 and 2/3 of its half period.
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0] if kind is None else [0.5, 1.0, 1.0, 0.75, 0.25])


@pytest.mark.parametrize(("temperature", "top_p"), [(0.8, 0.5), (0.8, 0.9), (1.0, 1.0)])
def test_the_trainers_log_probs_are_those_of_the_distribution_that_sampled(tok, tmp_path, temperature, top_p):
    """PPO's ratio needs π_old to be the sampling distribution: at the sampling temperature, and under
    top-p the trainer's log-probs are those of the truncated, renormalised distribution, as the
    sampler reported them."""
    rl = trainer(tok, rl_config(tmp_path, temperature=temperature, top_p=top_p))
    sampling = SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=12, seed=3)
    states = run_batch([r["question"] for r in RECORDS], rl.engine, KeywordRetriever(), dataclasses.replace(AGENT, sampling=sampling))
    trajectories = [token_trajectory(s) for s in states]
    batch = pack(trajectories, rl.pad_id)
    with torch.no_grad():
        scored = rl._score(batch, torch.zeros(len(states)))
    sampled = torch.zeros_like(batch.mask)
    for row, t in enumerate(trajectories):
        sampled[row, len(t.prompt_ids) : len(t.prompt_ids) + len(t.response_ids)] = torch.tensor(t.logprobs)
    torch.testing.assert_close(scored.logp * batch.mask, sampled * batch.mask, atol=1e-4, rtol=0)


def test_approx_kl_measures_the_whole_update_and_a_still_policy_is_reported(tok, tmp_path, caplog):
    """approx-KL is measured after every optimizer step of the update (it used to average in the first
    mini-batch, 0 by construction); a run whose policy does not move says so in one line."""
    moved = trainer(tok, rl_config(tmp_path / "a", max_steps=1)).train()
    assert moved["approx_kl"] > 0
    with caplog.at_level(logging.WARNING, logger="dgpo_agent.training.rl"):
        trainer(tok, rl_config(tmp_path / "b", max_steps=3, learning_rate=0.0, stall_steps=2)).train()
    assert [r["approx_kl"] for r in rows(tmp_path / "b")] == [0.0, 0.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "step 2: the policy has not moved for 2 steps" in warnings[0]


@pytest.mark.parametrize("teacher", [False, True])
def test_a_reward_that_never_varies_is_reported_unless_the_teacher_guides(tok, tmp_path, caplog, teacher):
    """The tiny untrained student never answers right: without the teacher PPO has nothing to learn
    and the log says so in one line; with the teacher's term the policy still learns, and it does not."""
    with caplog.at_level(logging.WARNING, logger="dgpo_agent.training.rl"):
        trainer(tok, rl_config(tmp_path, max_steps=3, stall_steps=2, beta=0.001 if teacher else 0.0), teacher=teacher).train()
    assert [r["reward_std"] for r in rows(tmp_path)] == [0.0, 0.0, 0.0]
    warnings = [r.getMessage() for r in caplog.records if "scored the same" in r.getMessage()]
    assert warnings == ([] if teacher else ["RL step 2: every rollout has scored the same for 2 steps: the reward has nothing to learn from; start from a cold start or let the teacher guide (dgpo, gkd)"])


class CopyEngine(TransformersPolicy):
    """The transformers backend over its own copy of the weights, recording every sync."""

    def __init__(self, model, tok):
        super().__init__(copy.deepcopy(model), tok)
        self.synced = []

    def load_weights(self, model, version):
        super().load_weights(model, version)
        self.synced.append(version)


def test_an_engine_with_its_own_weights_is_synced_once_per_update_before_it_rolls_out(tok, tmp_path):
    """Rollouts come from the engine, which is handed the trained weights lazily: once per RL step
    that changed them (two optimizer steps here), never during the critic's warm-up."""
    config = rl_config(tmp_path, max_steps=3, critic_warmup_steps=1, num_minibatches=2)
    student = copy.deepcopy(tiny_qwen2(tok))
    engine = CopyEngine(student, tok)
    rl = RLTrainer(student, tok, RECORDS, KeywordRetriever(), AGENT, config, teacher=tiny_qwen2(tok, seed=1, hidden=96), engine=engine)
    logged = [rl.train_step(step) for step in (1, 2, 3)]
    # Step 1 syncs the weights as handed in (version 1); step 2 follows the critic-only step 1, so
    # nothing changed; step 3 follows step 2's update (version 2). Step 3's own update (version 3)
    # waits for the next rollout.
    assert engine.synced == [1, 2] and engine.weights_version == 2 and rl.weights_version == 3
    assert [r["sync_s"] > 0 for r in logged] == [True, False, True]
    trained = dict(rl.model.named_parameters())
    assert any(not torch.equal(p, trained[n]) for n, p in engine.model.named_parameters())
    rl._sync_engine()
    assert all(torch.equal(p, trained[n]) for n, p in engine.model.named_parameters())


def test_rl_rolls_out_through_a_vllm_engine_given_the_weights_of_each_update(fake_vllm, tok, tmp_path):
    """A colocated vLLM engine (the stand-in of ``tests.fake_vllm``) loads the policy's checkpoint, is
    handed the trainer's weights before the first rollout and after each update, and the rollouts of
    one question are each seeded on their own."""
    from transformers import AutoModelForCausalLM

    from dgpo_agent.backends.vllm_engine import VLLMPolicy

    checkpoint = tmp_path / "student"
    tiny_qwen2(tok).save_pretrained(checkpoint)
    tok.save_pretrained(checkpoint)
    student = AutoModelForCausalLM.from_pretrained(checkpoint)
    engine = VLLMPolicy.colocated(str(checkpoint), rank=0, local_rank=0, world_size=1, gpu_memory_utilization=0.3, tokenizer=tok)
    config = rl_config(tmp_path / "rl", group_size=2, temperature=1.0)
    rl = RLTrainer(student, tok, RECORDS, KeywordRetriever(), AGENT, config, teacher=tiny_qwen2(tok, seed=1, hidden=96), engine=engine)
    rl.train()
    llm = fake_vllm.LLM.built[0]
    assert (engine.weights_version, llm.prefix_resets) == (2, 2) and rl.weights_version == 3
    assert all(len({r.seed for r in call}) == len(call) > 1 for call in llm.requests)
    rl._sync_engine()
    held = dict(llm.model.model.named_parameters())
    assert all(torch.equal(held[name], p) for name, p in rl.model.named_parameters())


def test_a_vllm_rollout_engine_is_refused_without_vllm_or_off_a_gpu(tok, tmp_path, monkeypatch, fake_vllm):
    """Refused by the settings, before any stage runs, where torch sees no GPU or vLLM is missing; and
    by the trainer when its accelerator placed it elsewhere (``ACCELERATE_USE_CPU`` on a GPU machine)."""
    with pytest.raises(DGPOError, match="rollout_engine vllm generates on a CUDA GPU and torch sees none: use rollout_engine transformers"):
        rl_config(tmp_path, rollout_engine="vllm")
    with monkeypatch.context() as gpu:
        gpu.setattr(torch.cuda, "is_available", lambda: True)
        config = rl_config(tmp_path, rollout_engine="vllm")
    with pytest.raises(DGPOError, match="rollout_engine vllm generates on a CUDA GPU and this run is on cpu: use rollout_engine transformers"):
        trainer(tok, config)
    monkeypatch.delitem(sys.modules, "vllm")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(DGPOError, match=r"vLLM is not installed: pip install 'dgpo-agent\[vllm\]'"):
        rl_config(tmp_path, rollout_engine="vllm")


def test_a_rollout_engine_must_take_weights(tok, tmp_path):
    with pytest.raises(DGPOError, match="cannot roll out with a ScriptedPolicy: pass a RolloutEngine"):
        RLTrainer(tiny_qwen2(tok), tok, RECORDS, KeywordRetriever(), AGENT, rl_config(tmp_path), engine=ScriptedPolicy(lambda q, t: ""))


def test_every_step_also_reaches_the_trackers_named_in_report_to(tok, tmp_path):
    """metrics.jsonl stays the record; a tracker (tensorboard here) gets the same numbers per step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer(tok, rl_config(tmp_path, report_to=["tensorboard"])).train()
    folders = {events.parent for events in (tmp_path / "tracking").rglob("events.out.tfevents.*")}  # scalars, hparams
    (scalars,) = [a for a in (EventAccumulator(str(f)).Reload() for f in folders) if "reward" in a.Tags()["scalars"]]
    logged = rows(tmp_path)
    assert [e.value for e in scalars.Scalars("reward")] == pytest.approx([r["reward"] for r in logged])
    assert [e.step for e in scalars.Scalars("approx_kl")] == [1, 2]


def test_critic_warm_up_trains_only_the_value_model(tok, tmp_path):
    rl = trainer(tok, rl_config(tmp_path, max_steps=1, critic_warmup_steps=1))
    policy = [p.detach().clone() for p in rl.model.parameters()]
    critic = [p.detach().clone() for p in rl.critic.parameters()]
    metrics = rl.train_step(1)
    assert all(torch.equal(a, b) for a, b in zip(policy, rl.model.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic, rl.critic.parameters(), strict=True))
    assert "pg_loss" not in metrics and metrics["vf_loss"] > 0


def test_resume_is_exact_and_refuses_a_changed_config(tok, tmp_path):
    straight = trainer(tok, rl_config(tmp_path / "a", max_steps=3))
    straight.train()
    first = trainer(tok, rl_config(tmp_path / "b", max_steps=2))
    first.train()
    resumed = trainer(tok, rl_config(tmp_path / "b", max_steps=3))
    assert resumed.resume() == 2
    resumed.train()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(a, b)
    untimed = [[{k: v for k, v in r.items() if not k.endswith(("_s", "_per_s"))} for r in rows(tmp_path / d)] for d in "ab"]
    assert untimed[0] == untimed[1]
    with pytest.raises(DGPOError, match="beta"):
        trainer(tok, rl_config(tmp_path / "b", max_steps=4, beta=0.5)).resume()


# ----------------------------------------------------------------------------------- subprocesses


def write_run(tmp_path: Path, world: Path, **rl) -> Path:
    """Tiny student and teacher checkpoints and a run file over the small world's store (the
    ``small_store`` fixture indexes it into WORLD/chroma)."""
    tok = tiny_tokenizer()
    for name, model in (("student", tiny_qwen2(tok)), ("teacher", tiny_qwen2(tok, seed=1, hidden=96))):
        model.save_pretrained(tmp_path / name)
        tok.save_pretrained(tmp_path / name)
    settings = dict(rl_config(tmp_path / "run", rollout_batch_size=3, micro_batch_size=3, max_new_tokens=24).__dict__, **rl)
    run = {
        "model": str(tmp_path / "student"),
        "teacher": str(tmp_path / "teacher"),
        "train_file": str(world / "train.jsonl"),
        "store": str(world / "chroma"),
        "agent": {"max_turns": 2, "top_k": 2},
        "rl": settings,
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def test_kill_9_during_rl_resumes_from_the_last_checkpoint(tmp_path, small_world, small_store):
    run = write_run(tmp_path, small_world, max_steps=4, save_every=2)
    command = [sys.executable, "-m", "dgpo_agent.training.rl", "--config", str(run)]
    proc = subprocess.Popen(command, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out = tmp_path / "run"
    deadline = time.time() + 120
    while not checkpoints(out) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert [p.name for p in checkpoints(out)] == ["step-0000002"]

    done = subprocess.run(command, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]

    # The same run without the kill, in this process, ends with the same weights.
    config = yaml.safe_load(run.read_text())
    config["rl"]["output_dir"] = str(tmp_path / "straight")
    straight = tmp_path / "straight.yaml"
    straight.write_text(yaml.safe_dump(config))
    run_file(straight)
    from safetensors.torch import load_file

    resumed, reference = load_file(out / "final" / "model.safetensors"), load_file(tmp_path / "straight" / "final" / "model.safetensors")
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in resumed)


def test_the_run_file_trains_on_search_r1_parquet(tmp_path, small_world, small_store):
    """Search-R1's own training data is parquet: the standalone runner reads it as the evaluation does."""
    run = write_run(tmp_path, small_world, max_steps=1, save_every=1)
    settings = yaml.safe_load(run.read_text())
    settings["train_file"] = str(ROOT / "tests/fixtures/searchr1_mini.parquet")
    run.write_text(yaml.safe_dump(settings))
    assert run_file(run)["step"] == 1
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_accelerate_launch_two_cpu_processes(tmp_path, small_world, small_store):
    run = write_run(tmp_path, small_world, max_steps=2, save_every=1)
    # accelerate's --cpu flag starts several processes only through mpirun (see check_cpu_launch), so
    # CPU processes come from torch's launcher, with ACCELERATE_USE_CPU selecting gloo.
    launcher = Path(sys.executable).with_name("accelerate")
    command = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "-m", "dgpo_agent.training.rl", "--config", str(run)]
    done = subprocess.run(command, cwd=ROOT, env={**env(), "ACCELERATE_USE_CPU": "1"}, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2]
    # Two processes × 3 prompts per step: the data position counts the global batch.
    assert [r["data_position"] for r in logged] == [6, 12]
    state = checkpoints(tmp_path / "run")[-1]
    assert sorted(p.name for p in state.glob("random_states_*.pkl")) == ["random_states_0.pkl", "random_states_1.pkl"]


def test_a_bf16_model_learns_at_the_papers_learning_rate(tok, tmp_path):
    """transformers loads a bf16 checkpoint in bf16, and at lr 1e-6 AdamW's steps are far below bf16's
    precision, so bf16 weights would barely change: the trainer and the pipeline's loader keep float32
    master weights whatever dtype the checkpoint has."""
    from dgpo_agent.training.stages import load_model

    copy.deepcopy(tiny_qwen2(tok)).to(torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert {p.dtype for p in load_model(tmp_path / "bf16").parameters()} == {torch.float32}

    student = copy.deepcopy(tiny_qwen2(tok)).to(torch.bfloat16)
    layers = {n: p.detach().float().clone() for n, p in student.named_parameters() if ".layers." in n}
    config = rl_config(tmp_path / "run", max_steps=3, learning_rate=1e-6, critic_learning_rate=1e-6, weight_decay=0.0)
    rl = RLTrainer(student, tok, RECORDS, KeywordRetriever(), AGENT, config, teacher=tiny_qwen2(tok, seed=1, hidden=96))
    rl.train()
    after = dict(rl.accelerator.unwrap_model(rl.model).named_parameters())
    changed = sum((after[n].detach() != before).sum().item() for n, before in layers.items())
    assert changed / sum(p.numel() for p in layers.values()) > 0.9
