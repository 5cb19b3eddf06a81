"""Does the copy curriculum make tiny models search for unseen names, or do optimiser steps alone?

For each arm (the copy curriculum in base pretraining and in the SFT's pretraining stream, or the
control without it, at the same step counts) and seed: train the world tokenizer, pretrain a
student-size base model on the world's passages, fine-tune it on the oracle's demonstrations (loss on
model tokens only, 20% of examples from the pretraining stream, as the teacher stage does), then
measure greedy test EM through the batched graph on the entity-disjoint test split, and the copy
probe on fresh names.

    dgpo-agent train --stop-after index           # the world and its store
    OMP_NUM_THREADS=1 python bench/copy_curriculum.py --run runs/tiny --seeds 0 1 --arms copy control

The oracle's training demonstrations are the run's (``oracle/train.jsonl``, written when a run trains
its own teacher) or, when the run has none, rolled out once into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from dgpo_agent.training.run import RunDir

ARMS = {"copy": 0.3, "control": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a `dgpo-agent train` run directory")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--pretrain-steps", type=int, default=400)
    parser.add_argument("--sft-steps", type=int, default=2300)
    parser.add_argument("--eval-n", type=int, default=600, help="test questions")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-copy"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/copy_curriculum.json"))
    args = parser.parse_args()

    results = [run_arm(args, arm, seed) for arm in args.arms for seed in args.seeds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for r in results:
        print(json.dumps(r))


def run_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """One arm and seed, or its recorded result: each finished arm writes ``result.json`` in its
    folder, so an interrupted bench reruns only the arms it had not finished."""
    done = args.work / f"{arm}-seed{seed}" / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    result = train_and_test(args, arm, seed)
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def train_and_test(args: argparse.Namespace, arm: str, seed: int) -> dict:
    from dgpo_agent.training.copy_curriculum import copy_accuracy
    from dgpo_agent.training.pretrain import PretrainConfig, pretrain
    from dgpo_agent.training.zoo import STUDENT, build_model, count_params
    from dgpo_agent.store import read_corpus
    from dgpo_agent.world import NameGenerator

    world = RunDir(args.run).world
    corpus = list(read_corpus(world.corpus))
    tokenizer = world_tokenizer(world, corpus)
    work = args.work / f"{arm}-seed{seed}"
    model = build_model(STUDENT, tokenizer, seed=seed)
    start = time.perf_counter()
    base = pretrain(
        model, tokenizer, corpus,
        PretrainConfig(steps=args.pretrain_steps, copy_fraction=ARMS[arm], seed=seed, save_dir=str(work / "base")),
    )
    sft = supervised(model, tokenizer, corpus, demonstrations(args.run, args.work), args.sft_steps, ARMS[arm], seed, work / "sft")
    fresh = NameGenerator(10_000 + seed, reserved={r["title"] for r in corpus})
    return {
        "arm": arm,
        "seed": seed,
        "params": count_params(model),
        "pretrain": base,
        "sft": sft,
        "train_minutes": round((time.perf_counter() - start) / 60, 1),
        "copy_accuracy": copy_accuracy(model, tokenizer, fresh, n=100),
        "test": evaluate(model, tokenizer, world, args.eval_n, work / "test.jsonl"),
    }


def demonstrations(run: Path, work: Path, style: str | None = None) -> Path:
    """The oracle's trajectories over the training questions, its comparisons in ``style``
    (``OraclePolicy(comparison=...)``): the run's when it has them in the default style, or rolled
    out here once (resumable)."""
    if style is None and RunDir(run).oracle_split("train").is_file():
        return RunDir(run).oracle_split("train")
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.store import ChromaStore
    from dgpo_agent.evals.harness import rollout_records
    from dgpo_agent.world import OraclePolicy, load_questions

    world = RunDir(run).world
    path, records = work / f"oracle-train{'-' + style if style else ''}.jsonl", load_questions(world.questions("train"))
    rollout_records(records, OraclePolicy(comparison=style), ChromaStore(world.store, must_exist=True), AgentConfig(), path, label="oracle train")
    return path


def world_tokenizer(world, corpus: list[dict]):
    from dgpo_agent.training.config import TokenizerSettings
    from dgpo_agent.training.tokenizer import train_tokenizer, world_texts
    from dgpo_agent.world import load_questions

    questions = [r["question"] for r in load_questions(world.questions("train"))]
    return train_tokenizer(world_texts(corpus, questions), vocab_size=TokenizerSettings().vocab_size)


def supervised(
    model, tokenizer, corpus, demonstrations: Path, steps: int, copy_fraction: float, seed: int, out: Path, extra=None,
) -> dict:
    """SFT on the oracle's demonstrations (loss on the model's own tokens) mixed with the arm's
    pretraining stream, as the pipeline's teacher stage trains, and with ``extra`` token sequences
    (loss on every token) when given."""
    from dgpo_agent.training.config import TeacherSettings
    from dgpo_agent.training.data import load_examples
    from dgpo_agent.training.distill import DistillConfig, train_sft
    from dgpo_agent.training.pretrain import PretrainConfig
    from dgpo_agent.training.stages import with_full_loss, with_lm_stream

    config = DistillConfig(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=8, learning_rate=1e-3,
        lr_scheduler_type="cosine", warmup_steps=20, seed=seed, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=50, disable_tqdm=True,
    )
    demos = load_examples(demonstrations, tokenizer, correct_only=True)
    stream = PretrainConfig(copy_fraction=copy_fraction, seed=seed + 1)
    dataset = with_lm_stream(demos, tokenizer, corpus, TeacherSettings().lm_fraction, stream)
    if extra is not None:
        dataset = with_full_loss(dataset, extra)
    return train_sft(model, tokenizer, dataset, config)


def evaluate(model, tokenizer, world, n: int, out: Path) -> dict:
    """Greedy test EM per data source through the batched graph; trajectories kept in ``out``."""
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.store import ChromaStore
    from dgpo_agent.training.config import AgentSettings
    from dgpo_agent.training.evaluate import evaluate_policy
    from dgpo_agent.world import load_questions

    records = load_questions(world.questions("test"))[:n]
    policy, store = TransformersPolicy(model.eval(), tokenizer), ChromaStore(world.store, must_exist=True)
    return evaluate_policy(policy, records, store, AgentSettings().config(max_new_tokens=96), out, label="test")


if __name__ == "__main__":
    main()
