"""Fresh questions about one split's entities: a second sample of dev (or test) questions that no
setting was ever chosen on.

The world's generator is re-run with another question seed over the same KB, corpus and entity
split, and every question that repeats one of the split's own (same family, same entities) is
dropped; the rest are drawn in the split's own mix of question families. A gain that holds on the
split's own questions but not on fresh questions about the same entities comes from those
particular questions (for dev: from choosing settings on them), not from the entities.

    python bench/fresh_questions.py --world runs/tiny/world --split dev --questions 300 --out runs/fresh-dev/dev.jsonl
    dgpo-agent eval --model dgpo=runs/tiny/rl/dgpo/final --data runs/fresh-dev/dev.jsonl --store runs/tiny/world/chroma
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter
from pathlib import Path

from dgpo_agent.world.corpus import build_corpus
from dgpo_agent.world.files import WorldDir, load_questions, write_jsonl
from dgpo_agent.world.grammar import DATA_SOURCES
from dgpo_agent.world.kb import WorldConfig, build_kb
from dgpo_agent.world.questions import generate_questions, partition


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", type=Path, required=True, help="a generated world's folder (world.json, its splits)")
    parser.add_argument("--split", choices=("dev", "test"), default="dev")
    parser.add_argument("--questions", type=int, default=300, help="fresh questions to write, in the split's mix of families")
    parser.add_argument("--seed", type=int, default=1, help="question seed of the fresh sample (the world's own is its seed)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    world = WorldDir(args.world)
    config = WorldConfig(**json.loads(world.summary.read_text())["config"])
    own = load_questions(world.questions(args.split))
    fresh = fresh_questions(config, args.split, own, args.questions, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out, fresh)
    counts = ", ".join(f"{source} {sum(q['data_source'] == source for q in fresh)}" for source in DATA_SOURCES)
    print(f"{len(fresh)} fresh {args.split} questions ({counts}) -> {args.out}")


def fresh_questions(config: WorldConfig, split: str, own: list[dict], size: int, seed: int) -> list[dict]:
    """About ``size`` questions on ``split``'s entities that repeat none of ``own``, in ``own``'s mix of
    question families (fewer where a family has run out of new questions)."""
    kb = build_kb(config)
    _, evidence = build_corpus(kb, config)
    split_of = partition(kb, config)
    sizes = {f"{name}_questions": 4 * size if name == split else 0 for name in ("train", "dev", "test")}
    drawn = generate_questions(kb, evidence, split_of, dataclasses.replace(config, seed=seed, **sizes))[split]
    asked = {(q["family"], tuple(q["entities"])) for q in own}
    new = [q for q in drawn if (q["family"], tuple(q["entities"])) not in asked]
    mix = Counter(q["family"] for q in own)
    picked = [q for family, n in sorted(mix.items()) for q in [q for q in new if q["family"] == family][: round(n * size / len(own))]]
    return [{**q, "id": f"{split}_fresh_{i:05d}"} for i, q in enumerate(picked)]


if __name__ == "__main__":
    main()
