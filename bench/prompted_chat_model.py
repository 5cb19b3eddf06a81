"""A real chat model, only prompted, through the agent graph: how the protocol is laid out in its chat.

SmolLM2-135M-Instruct (``dgpo_agent.smollm2``) answers the project's own questions about gensim's
Wikipedia sample (``dgpo_agent.wikipedia``) through the ARC harness with one ``protocol.ChatFormat``:
``--observations inline`` (Search-R1: documents and corrections inside the model's own turn) or
``user`` (a new user turn of the chat template), and ``--examples`` worked examples before the
question. Reports EM, hit ratio, invalid-action rate and how the runs behave. Each format runs in its
own process; ``--merge`` joins their JSON files.

    python bench/prompted_chat_model.py --observations inline --examples 0 --out /tmp/inline-0.json
    python bench/prompted_chat_model.py --observations user --examples 2 --out /tmp/user-2.json
    python bench/prompted_chat_model.py --merge /tmp/inline-0.json /tmp/user-2.json --out bench/results/prompted_chat_model.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

KEYS = ("em", "f1", "hit", "invalid", "answered", "searches", "turns", "em_no_think", "em_think")


def prepare(work: Path) -> tuple[Path, Path]:
    """The questions file and the Chroma store, built once under ``work``."""
    from dgpo_agent import wikipedia
    from dgpo_agent.store import index_corpus
    from dgpo_agent.world.files import WorldDir

    data = WorldDir(work)
    if not data.questions("test").is_file():
        wikipedia.build(work)
    if not data.store.is_dir():
        index_corpus(data.corpus, data.store, progress=False)
    return data.questions("test"), data.store


def behaviour(rows: list[dict]) -> dict:
    """What the metrics do not show: searches whose query is a word copied from the protocol's own
    text, and model turns the model closed itself (its end-of-turn token)."""
    queries = [s["query"] for r in rows for s in r["steps"] if s["kind"] == "search"]
    model_turns = [seg for r in rows for seg in r["segments"] if seg["role"] == "model"]
    return {
        "searches": len(queries),
        "copied_queries": sum(q.strip().lower() in {"and", "query", "your query"} for q in queries),
        "model_turns": len(model_turns),
        "invalid_turns": sum(s["kind"] == "invalid" for r in rows for s in r["steps"]),
    }


def run(args: argparse.Namespace) -> dict:
    from dgpo_agent import smollm2
    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.evals.data import load_dataset
    from dgpo_agent.evals.harness import EvalConfig, evaluate, metrics
    from dgpo_agent.protocol import ChatFormat
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.store import open_retriever

    questions, store = prepare(args.work)
    records = load_dataset(questions.with_name(f"{args.split}.jsonl"), args.limit)
    policy = TransformersPolicy.from_pretrained(str(smollm2.checkpoint()))
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens)
    agent = AgentConfig(max_turns=args.max_turns, sampling=sampling, format=ChatFormat(args.observations, args.examples))
    config = EvalConfig(agent, batch_size=args.batch_size)
    path = args.out.with_suffix(".trajectories.jsonl")
    path.unlink(missing_ok=True)
    start = time.perf_counter()
    rows = evaluate(records, policy, open_retriever(str(store)), config, path, label=f"{args.observations}, {args.examples} examples")
    seconds = time.perf_counter() - start
    overall = metrics(rows)["all"]
    return {
        "format": {"observations": args.observations, "examples": args.examples},
        "split": args.split,
        "questions": len(records),
        "settings": config.describe(),
        "seconds": round(seconds, 1),
        "metrics": {k: overall.get(k) for k in KEYS},
        "behaviour": behaviour(rows),
        "examples": [{"question": r["question"], "answer": r["answer"], "gold": r["golden_answers"]} for r in rows[:8]],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("runs/wiki"), help="corpus, questions and store (built if missing)")
    parser.add_argument("--observations", choices=("inline", "user"), default="user")
    parser.add_argument("--examples", type=int, default=2)
    parser.add_argument("--split", choices=("dev", "test"), default="test", help="dev to choose a format on, test to report")
    parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
    parser.add_argument("--max-turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--merge", type=Path, nargs="+", help="join the JSON files of earlier runs instead of running")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.merge:
        result = {"runs": [json.loads(p.read_text()) for p in args.merge]}
    else:
        result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(result.get("metrics", result), indent=2))


if __name__ == "__main__":
    main()
