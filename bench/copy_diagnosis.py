"""Why the students stay below the teacher: do they copy the question's names into their queries?

Reads test trajectories (the pipeline's ``test.jsonl`` files or ``dgpo-agent eval``'s) and the world's
test questions (for the entities each question names) and measures, per model:

- single-hop: how often a query holds the question's entity name exactly, and the EM with and without;
- compare: how often the queries hold both names, the answer names one of the two, it is right, and
  it is the first name the question gives (the world draws the two in random order, so a policy that
  always answers the first name is right about half the time without comparing anything); and,
  after a search that found one of the question's evidence passages, how often the next thought
  states that passage's year (the fact the comparison needs, copied from the context);
- evidence recall over all questions.

Several files under one name (one per seed) are averaged, with the spread over them.

    python bench/copy_diagnosis.py --questions runs/tiny/world/test.jsonl \\
        teacher=runs/tiny/eval/trajectories/teacher.jsonl dgpo=runs/bench-rl/seed0/rl/dgpo/final/test.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path

from dgpo_agent.protocol import normalize_answer
from dgpo_agent.world.corpus import YEAR, read_facts

COLUMNS = {
    "name_in_query": "single: name in a query",
    "em_with_name": "single: EM with it",
    "em_without_name": "single: EM without",
    "both_names": "compare: both names in queries",
    "names_one": "compare: answer names one",
    "right_when_named": "compare: right when it does",
    "first_named": "compare: the question's first name",
    "year_read": "compare: passage's year read",
    "evidence_recall": "evidence recall (all)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, required=True, help="the world's test.jsonl (entities per question)")
    parser.add_argument("trajectories", nargs="+", help="NAME=FILE, repeatable; files of one name are averaged")
    parser.add_argument("--out", type=Path, default=Path("bench/results/copy_diagnosis.json"))
    args = parser.parse_args()

    questions = {q["id"]: q for q in map(json.loads, args.questions.read_text().splitlines())}
    measured: dict[str, list[dict]] = {}
    for spec in args.trajectories:
        name, _, path = spec.rpartition("=")
        if not Path(path).is_file():
            raise SystemExit(f"no trajectories at {path}: pass NAME=FILE with a test.jsonl of trajectories")
        rows = [{**questions[r["id"]], **r} for r in map(json.loads, Path(path).read_text().splitlines())]
        measured.setdefault(name or Path(path).parent.name, []).append(diagnose(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"questions": str(args.questions), "models": measured}, indent=2) + "\n")
    print("| model | " + " | ".join(COLUMNS.values()) + " |\n|---|" + "---|" * len(COLUMNS))
    for name, runs in measured.items():
        print(f"| {name} ({len(runs)}) | " + " | ".join(cell([r[k] for r in runs]) for k in COLUMNS) + " |")


def diagnose(rows: list[dict]) -> dict[str, float]:
    """The copy measures of one model's trajectories (rows carrying their question's ``entities``)."""
    single = [r for r in rows if r["data_source"] == "world_single"]
    compare = [r for r in rows if r["data_source"] == "world_compare"]
    copied = [r for r in single if _in_queries(r["entities"][0], r)]
    missed = [r for r in single if not _in_queries(r["entities"][0], r)]
    named = [r for r in compare if r["answer"] and normalize_answer(r["answer"]) in {normalize_answer(e) for e in r["entities"]}]
    return {
        "name_in_query": _share(copied, single),
        "em_with_name": _mean(r["scores"]["em"] for r in copied),
        "em_without_name": _mean(r["scores"]["em"] for r in missed),
        "both_names": _mean(all(_in_queries(e, r) for e in r["entities"]) for r in compare),
        "names_one": _share(named, compare),
        "right_when_named": _mean(r["scores"]["em"] for r in named),
        "first_named": _mean(normalize_answer(r["answer"]) == normalize_answer(r["entities"][0]) for r in named),
        "year_read": _mean(read for r in compare for read in _years_read(r)),
        "evidence_recall": _mean(r["scores"]["evidence_recall"] for r in rows if r["scores"].get("evidence_recall") is not None),
    }


STATED_YEAR = re.compile(rf"\b{YEAR}\b")  # a year as the world writes it


def _years_read(row: dict) -> list[bool]:
    """For each search that found one of the question's evidence passages and is followed by a thought
    stating a year: whether the thought states the year the passage gives as its fact (the world's
    reader tells it from a filler sentence's random year; a thought may restate an earlier year too)."""
    steps, read = row["steps"], []
    for i, step in enumerate(steps):
        if step["kind"] != "search":
            continue
        evidence = [doc for doc in step.get("docs", []) if doc["id"] in row["evidence"]]
        thought = next((later for later in steps[i + 1:] if later["kind"] == "think"), None)
        stated = STATED_YEAR.findall(thought["text"]) if thought else []
        facts = [year for (_, relation), year in read_facts(evidence[0]["text"]).items() if relation.endswith("_year")] if evidence else []
        if stated and len(facts) == 1:
            read.append(facts[0] in stated)
    return read


def _in_queries(name: str, row: dict) -> bool:
    return any(name.lower() in step["query"].lower() for step in row["steps"] if step["kind"] == "search")


def _share(part: list, whole: list) -> float:
    return len(part) / len(whole) if whole else float("nan")


def _mean(values) -> float:
    values = [float(v) for v in values]
    return statistics.fmean(values) if values else float("nan")


def cell(values: list[float]) -> str:
    values = [v for v in values if v == v]  # NaN: nothing to measure (no question of that kind)
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main()
