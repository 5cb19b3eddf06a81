"""RL that learns: on a small question set seen again every step, the whole loop (rollouts through the
graph, reward, update) raises the training reward, with the task reward (PPO) or with the teacher
alone (GKD). A trainer whose update did not reach the policy would leave the reward flat."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from dgpo_agent.backends.transformers import TransformersPolicy
from dgpo_agent.rollout import AgentConfig
from dgpo_agent.training.callbacks import METRICS
from dgpo_agent.training.rl import RLTrainer
from dgpo_agent.training.rl_config import RLConfig
from tests.fakes import KeywordRetriever
from tests.models import tiny_tokenizer

COLORS = ["red", "blue", "green", "gold"]
QUESTIONS = [
    {"id": f"q{i}", "question": question, "golden_answers": [color]}
    for i, (question, color) in enumerate(
        [("Which color is a ruby?", "red"), ("What is the sky like?", "blue"), ("Grass?", "green"), ("Tell me the shade of the sun.", "gold")]
    )
]
AGENT = AgentConfig(max_turns=1, top_k=1)

pytestmark = pytest.mark.usefixtures("one_thread")


def answering_model(tok, answers, seed: int):
    """A tiny Qwen2 fine-tuned to answer each question with one of ``answers(question)`` (repeats
    weigh more), so it samples the right color sometimes and the others the rest of the time."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=True, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen2ForCausalLM(config)
    policy = TransformersPolicy(model, tok)
    examples = [
        (policy.prompt(q["question"])["ids"], tok.encode(f"<answer> {a} </answer>", add_special_tokens=False) + [tok.eos_token_id])
        for q in QUESTIONS
        for a in answers(q)
    ]
    width = max(len(p) + len(a) for p, a in examples)
    ids = torch.tensor([p + a + [tok.pad_token_id] * (width - len(p) - len(a)) for p, a in examples])
    labels = torch.tensor([[-100] * len(p) + a + [-100] * (width - len(p) - len(a)) for p, a in examples])
    attention = torch.tensor([[1] * (len(p) + len(a)) + [0] * (width - len(p) - len(a)) for p, a in examples])
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3)
    model.train()
    for _ in range(100):
        model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


@pytest.fixture(scope="module")
def models():
    tok = tiny_tokenizer()
    student = answering_model(tok, lambda q: COLORS + q["golden_answers"], seed=0)  # right ~1 time in 3
    teacher = answering_model(tok, lambda q: q["golden_answers"], seed=1)
    return tok, student, teacher


@pytest.mark.parametrize("algorithm", ["ppo", "gkd"])
def test_rl_on_a_repeated_question_set_raises_its_training_reward(models, tmp_path, algorithm):
    import copy

    tok, student, teacher = models
    config = RLConfig(
        output_dir=str(tmp_path), algorithm=algorithm, kl_on="all" if algorithm == "gkd" else "none", guidance="advantage", beta=1.0,
        rollout_batch_size=len(QUESTIONS), group_size=8, max_steps=24, learning_rate=3e-4, critic_learning_rate=1e-3,
        warmup_ratio=0.0, critic_warmup_ratio=0.0, ppo_epochs=2, num_minibatches=2, micro_batch_size=16, save_every=100,
        temperature=1.0, max_new_tokens=8, kl_estimator="k1",
    )
    RLTrainer(copy.deepcopy(student), tok, QUESTIONS, KeywordRetriever(), AGENT, config, teacher=teacher if algorithm == "gkd" else None).train()
    logged = [json.loads(line) for line in (tmp_path / METRICS).read_text().splitlines()]
    rewards = [row["reward"] for row in logged]
    assert statistics.fmean(rewards[-4:]) - rewards[0] >= 0.2, rewards  # step 1 rolls out the untrained policy
    for row in logged:  # EM is 0 or 1, so the rewards' spread over a step is √(r(1 − r))
        assert row["reward_std"] == pytest.approx(math.sqrt(row["reward"] * (1 - row["reward"])), abs=1e-5)
