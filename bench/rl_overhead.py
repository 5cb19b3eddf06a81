"""Cost of DGPO's teacher guidance and of agentic rollouts, as ratios measured in one run.

1. Teacher overhead: the share of a DGPO step (rollout, scoring, PPO update) spent in the teacher's
   forward pass over the rollouts. Target: at most 0.15.
2. Rollout throughput: model tokens per second through the batched agent graph (multi-turn, stop
   strings, retrieval) against a plain batched ``model.generate`` of the same number of tokens from the
   same prompts. Target: at least 0.7.
3. Padding: one step's scoring pass (policy, critic and teacher forwards) in the trainer's micro-batches
   (rows of similar length, each cut after its own longest row) against the same pass in row order,
   every micro-batch padded to the step's longest rollout (the trainer before length sorting).

Models are the run's cold-started student and its teacher, as DGPO trains them: how long rollouts
last and how many of them are wrong (the teacher scores only those) depend on training. ``--fresh``
uses freshly initialised zoo models instead (every rollout wrong, every turn to the token limit).

    dgpo-agent train --stop-after cold-start
    python bench/rl_overhead.py --run runs/tiny
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run through the cold start")
    parser.add_argument("--fresh", action="store_true", help="freshly initialised zoo models instead of the run's")
    parser.add_argument("--batch", type=int, default=128, help="prompts per step (the tiny preset's rl.rollouts)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps (after one warm-up step)")
    parser.add_argument("--max-new-tokens", type=int, default=96, help="tokens per turn")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("bench/results/rl_overhead.json"))
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.store import open_retriever
    from dgpo_agent.training.rl import RLTrainer
    from dgpo_agent.training.rl_config import RLConfig
    from dgpo_agent.training.run import RunDir
    from dgpo_agent.training.zoo import STUDENT, TEACHER, build_model, count_params
    from dgpo_agent.world import load_questions

    torch.set_num_threads(1)
    run = RunDir(args.run)
    tokenizer = AutoTokenizer.from_pretrained(run.tokenizer)
    if args.fresh:
        student, teacher = build_model(STUDENT, tokenizer, seed=0), build_model(TEACHER, tokenizer, seed=1)
    else:
        student = AutoModelForCausalLM.from_pretrained(run.cold_start("kd"))
        teacher = AutoModelForCausalLM.from_pretrained(run.teacher)
    records = load_questions(run.world.questions("train"))
    agent = AgentConfig(max_turns=args.max_turns, top_k=3, sampling=SamplingParams(max_new_tokens=args.max_new_tokens))
    config = RLConfig(
        output_dir=tempfile.mkdtemp(), rollout_batch_size=args.batch, micro_batch_size=8, num_minibatches=2,
        max_steps=args.steps + 1, learning_rate=1e-5, warmup_ratio=0.0, critic_warmup_ratio=0.0, max_new_tokens=args.max_new_tokens,
    )
    trainer = RLTrainer(student, tokenizer, records, open_retriever(str(run.world.store)), agent, config, teacher=teacher)
    trainer.train_step(1)  # warm-up: embedder, allocator, first-call overheads
    score, seen = trainer._score, {}
    trainer._score = lambda batch, scores: seen.update(batch=batch, scores=scores) or score(batch, scores)
    steps = [trainer.train_step(step) for step in range(2, args.steps + 2)]
    trainer._score = score
    padding = padding_cost(trainer, seen["batch"], seen["scores"])

    rollout_tokens = sum(m["response_length"] * args.batch for m in steps)
    rollout_s = sum(m["rollout_s"] for m in steps)
    plain_tokens, plain_s = plain_generate(trainer, records, args.batch, steps)
    teacher_share = sum(m["teacher_s"] for m in steps) / sum(m["step_s"] for m in steps)
    throughput_ratio = (rollout_tokens / rollout_s) / (plain_tokens / plain_s)
    result = {
        "models": "fresh" if args.fresh else "trained (cold start, teacher)",
        "student_params": count_params(student),
        "teacher_params": count_params(teacher),
        "prompts_per_step": args.batch,
        "max_turns": args.max_turns,
        "max_new_tokens_per_turn": args.max_new_tokens,
        "steps": args.steps,
        "step_s": round(sum(m["step_s"] for m in steps) / len(steps), 3),
        "rollout_s": round(rollout_s / len(steps), 3),
        "teacher_s": round(sum(m["teacher_s"] for m in steps) / len(steps), 3),
        "teacher_share_of_step": round(teacher_share, 4),
        "wrong_rollouts": round(sum(m["wrong_frac"] for m in steps) / len(steps), 3),
        "rollout_tokens_per_s": round(rollout_tokens / rollout_s, 1),
        "plain_generate_tokens_per_s": round(plain_tokens / plain_s, 1),
        "rollout_vs_plain_throughput": round(throughput_ratio, 3),
        **padding,
        "targets": {"teacher_share_of_step": "<= 0.15", "rollout_vs_plain_throughput": ">= 0.7"},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def padding_cost(trainer, batch, scores) -> dict[str, float]:
    """The last measured step's scoring pass, timed as the trainer runs it and with its micro-batches in
    row order, not cut (``Batch.trimmed`` as the identity); and the share of padding each forwards."""
    from unittest import mock

    import torch

    from dgpo_agent.training.rl import Batch

    def in_row_order(index, batch):
        yield from index.split(trainer.config.micro_batch_size)

    def padded_share(micros) -> float:
        positions = sum(len(index) * int(batch.attention_mask[index].sum(1).max()) for index in micros)
        return 1 - batch.attention_mask.sum().item() / positions

    rows = torch.arange(batch.input_ids.shape[0])
    with torch.no_grad():
        started = time.perf_counter()
        trainer._score(batch, scores)
        sorted_s = time.perf_counter() - started
        with mock.patch.object(Batch, "trimmed", lambda self: self), mock.patch.object(trainer, "_micro_batches", in_row_order):
            started = time.perf_counter()
            trainer._score(batch, scores)
            padded_s = time.perf_counter() - started
    full = batch.input_ids.numel()
    return {
        "scoring_s_length_sorted": round(sorted_s, 3),
        "scoring_s_padded_to_longest": round(padded_s, 3),
        "scoring_speedup_from_length_sorting": round(padded_s / sorted_s, 3),
        "padding_share_length_sorted": round(padded_share(list(trainer._micro_batches(rows, batch))), 3),
        "padding_share_padded_to_longest": round(1 - batch.attention_mask.sum().item() / full, 3),
    }


def plain_generate(trainer, records: list[dict], batch: int, steps: list[dict]) -> tuple[int, float]:
    """One ``model.generate`` per measured step over the same prompts, forced to emit each step's mean
    response length per row (no stop strings, no early EOS): the same token count, no agent loop."""
    import torch

    from dgpo_agent.backends.base import Context
    from dgpo_agent.backends.transformers import _left_pad

    policy = trainer.engine
    tokens, seconds = 0, 0.0
    for i, metrics in enumerate(steps):
        prompts = [policy.prompt(r["question"]) for r in trainer.step_records(i + 2)]
        rows = policy.rows([Context(question="", segments=[p]) for p in prompts], 0, None)
        input_ids, attention_mask = _left_pad(rows, policy.pad_id, policy.device)
        length = max(1, round(metrics["response_length"]))
        started = time.perf_counter()
        with torch.no_grad():
            policy.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, do_sample=True, top_k=0, top_p=1.0, temperature=1.0,
                max_new_tokens=length, min_new_tokens=length, pad_token_id=policy.pad_id,
            )
        seconds += time.perf_counter() - started
        tokens += length * batch
    return tokens, seconds


if __name__ == "__main__":
    main()
