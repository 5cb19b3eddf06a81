"""Which step of a compare answer does a small model fail at, and which can demonstrations or drills teach?

The shipped teacher reads both years of a compare question and then picks one of the two names about
as often right as wrong (bench/README.md, "The students' coin toss leans to the question's first
name"). Its demonstrations state both facts and then the answer, so the comparison is left to the
answer's first token. Each arm starts from the shipped teacher and fine-tunes it for ``--steps`` on
the oracle's correct demonstrations of the training split's compare questions (a fifth of the
examples from the pretraining stream, as the teacher stage trains):

- ``control``: the demonstrations the teacher was trained on, so the arm measures more compare
  training alone;
- ``stated``: the oracle with ``comparison="stated"``, whose answer first says "The earlier of 1962 and
  1916 is 1916." and so puts the two years side by side before the choice;
- ``drilled``: ``stated``, with ``--drill-share`` of the examples year drills in the same words on
  random pairs (year_order.py: the order of the world's year tokens is learnt from drills alone);
- ``framed``: ``drilled`` with the oracle's ``comparison="framed"``: every thought first says which
  year the question wants ("I want the earlier year."), and the step pairs each year with its entity
  ("The earlier of 1962 (A) and 1916 (B) is 1916 (B)."), so the answer's name is copied from beside
  the chosen year;
- ``ordered``: ``drilled`` with ``comparison="ordered"``: framed so too, and the step says which fact
  holds the chosen year ("The earlier of 1962 and 1916 is 1916, the second."), so the answer copies
  that fact's entity, where a policy already copies names;
- ``placed``: ``comparison="placed"``, framed, the step naming only the winning fact's place ("The
  earlier of 1962 and 1916 is the second."), with drills in that form;
- ``keyed``: ``drilled`` with ``comparison="keyed"``: framed, each year fact said year first ("In 1916,
  B was founded."), and the step ends with the chosen year and the name that followed it there ("The
  earlier of 1962 and 1916 is 1916, B."), so the name is copied forward from the chosen year;
- ``bound``: ``keyed``, with its drills in the keyed form too: two facts about fresh names (none of
  the world's) and the step that picks one, so the drills teach the name after the chosen year as
  well as the years' order;
- ``episodes``: ``keyed``, with whole compare episodes about fresh names in place of drills: the
  question, both searches and their one-passage results, and the keyed answer (``keyed_episodes``), so
  the binding is taught where the answer needs it, after the question and two searches, on names
  never seen twice;

and ``shipped``, the teacher as it is. Every arm is scored greedy on the dev and test compare
questions through the batched graph, with copy_diagnosis's compare measures; a fine-tuned arm keeps
its model in ``<work>/<arm>-seed<seed>/model``.

    dgpo-agent train --stop-after index           # the world and its store
    OMP_NUM_THREADS=1 python bench/compare_step.py --run runs/tiny --seeds 0 1 2     # every arm; or --arms ...
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from copy_curriculum import supervised  # bench/, beside this script
from copy_diagnosis import cell, diagnose
from year_order import drills

from dgpo_agent.protocol import normalize_answer
from dgpo_agent.training.run import RunDir
from dgpo_agent.world import NameGenerator
from dgpo_agent.world.grammar import parse_question
from dgpo_agent.world.oracle import COMPARED, ORDINALS, STATEMENTS

# Each fine-tuned arm's demonstrations (the oracle's comparison style) and the style of the year
# drills mixed in (None: none).
ARMS = {
    "shipped": None,
    "control": (None, None),
    "stated": ("stated", None),
    "drilled": ("stated", "stated"),
    "framed": ("framed", "stated"),
    "ordered": ("ordered", "stated"),
    "placed": ("placed", "placed"),
    "keyed": ("keyed", "stated"),
    "bound": ("keyed", "keyed"),
    "episodes": ("keyed", "episodes"),
}
COMPARE = "world_compare"
MEASURES = ("names_one", "right_when_named", "first_named", "year_read")
# The step as any comparison style says it: the word, both years, then the chosen year, its place, or both.
STEP = re.compile(r"The (earlier|later) of (\d{4})(?: \(.*?\))? and (\d{4})(?: \(.*?\))? is (?:(\d{4})(?: \(.*?\))?)?(?:,? ?the (first|second))?")
STEP_CHECKS = ("step_word", "step_year", "step_place", "step_name", "step_follows")
YEAR_VERBS = "|".join(re.escape(STATEMENTS[r].split("{s} ")[1].removesuffix(" in {o}")) for r in STATEMENTS if r.endswith("_year"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a `dgpo-agent train` run directory")
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=600, help="fine-tuning steps of 8 examples")
    parser.add_argument("--drill-share", type=float, default=0.25, help="the share of drill examples in an arm with drills")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-compare-step"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/compare_step.json"))
    args = parser.parse_args()

    results = [run_arm(args, arm, seed) for arm in args.arms for seed in (args.seeds if arm != "shipped" else args.seeds[:1])]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))


COLUMNS = {"em": "EM", "names_one": "names one", "right_when_named": "right when it does", "step_stated": "step stated",
           "step_word": "its word", "step_year": "its choice", "step_place": "its place", "step_name": "its name",
           "step_follows": "follows the place"}


def table(results: list[dict]) -> str:
    """Per arm and split, each measure's mean ± std over the arm's seeds (markdown)."""
    lines = ["| arm (seeds) | split | " + " | ".join(COLUMNS.values()) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        for split in ("dev", "test"):
            cells = [cell([r[split][k] for r in runs if r[split].get(k) is not None]) for k in COLUMNS]
            lines.append(f"| {arm} ({len(runs)}) | {split} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_arm(args: argparse.Namespace, arm: str, seed: int) -> dict:
    """One arm and seed, or its recorded result (an interrupted bench reruns only unfinished arms)."""
    work = args.work / f"{arm}-seed{seed}"
    done = work / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dgpo_agent.store import read_corpus
    from dgpo_agent.training.config import BaseSettings
    from dgpo_agent.training.copy_curriculum import world_names
    from dgpo_agent.training.starting_point import ASSETS

    teacher = ASSETS / "teacher"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(teacher), AutoTokenizer.from_pretrained(teacher)
    result = {"arm": arm, "seed": seed, "steps": 0 if arm == "shipped" else args.steps}
    if arm != "shipped":
        corpus = list(read_corpus(RunDir(args.run).world.corpus))
        style, drilled = ARMS[arm]
        demos = demonstrations(args.run, args.work, style)
        extra = year_drills(tokenizer, demos, args.drill_share, seed, drilled, world_names(corpus)) if drilled else None
        copies = BaseSettings().copy_fraction  # the world's pretraining stream, as the teacher stage mixes it in
        result["sft"] = supervised(model, tokenizer, corpus, demos, args.steps, copies, seed=seed, out=work / "sft", extra=extra)
        model.save_pretrained(work / "model")
        tokenizer.save_pretrained(work / "model")
    for split in ("dev", "test"):
        result[split] = evaluate(model, tokenizer, args.run, split, work / f"{split}.jsonl")
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=2) + "\n")
    return result


def demonstrations(run: Path, work: Path, style: str | None) -> Path:
    """The oracle's trajectories over the training split's compare questions in a comparison style,
    rolled out once: an interrupted roll-out is finished on the next call, never trained on in part
    (two processes must not write it at once: run one arm's first seed alone)."""
    from dgpo_agent.evals.harness import rollout_records
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.store import ChromaStore
    from dgpo_agent.world import OraclePolicy

    path = work / f"oracle-{style or 'control'}.jsonl"
    store = ChromaStore(RunDir(run).world.store, must_exist=True)
    rollout_records(compare_questions(run, "train"), OraclePolicy(comparison=style), store, AgentConfig(), path, label="oracle train")
    return path


def year_drills(tokenizer, demos: Path, share: float, seed: int, style: str, reserved: set[str]) -> list[list[int]]:
    """Packed sequences of year drills (or, ``episodes``, keyed compare episodes), ``share`` of the
    examples once mixed in beside the demonstrations and the fifth from the pretraining stream (keyed
    drills and episodes about fresh names that share no word with ``reserved``, the world's)."""
    from dgpo_agent.training.config import TeacherSettings
    from dgpo_agent.training.pretrain import pack

    others = sum(1 for _ in demos.open()) / (1 - TeacherSettings().lm_fraction)
    rng, names = random.Random(f"{seed}:drills"), NameGenerator(f"{seed}:drill-names", reserved)
    stream = keyed_episodes(rng, names) if style == "episodes" else drills(rng, set(), style, names)
    return pack(stream, tokenizer, 256, round(others * share / (1 - share)))


def keyed_episodes(rng: random.Random, names: NameGenerator) -> Iterator[str]:
    """Endless compare episodes about fresh names, as the agent sees them: the question, each search
    and its one passage, and the keyed oracle's answer (two different years, in the world's range)."""
    from dgpo_agent import protocol
    from dgpo_agent.backends.base import Context
    from dgpo_agent.training.copy_curriculum import YEARS, fact_doc
    from dgpo_agent.world import OraclePolicy
    from dgpo_agent.world.grammar import FAMILIES, fill
    from dgpo_agent.world.kb import WORK_TYPES

    oracle = OraclePolicy(comparison="keyed")
    families = [f for f in FAMILIES if f.pick]
    while True:
        family = rng.choice(families)
        work_type = rng.choice(WORK_TYPES) if family.subject == "work" else ""
        entities = [names.name(family.subject) for _ in range(2)]
        years = rng.sample(range(YEARS[0], YEARS[1] + 1), 2)
        question = fill(rng.choice(family.phrasings), tuple(entities), work_type)
        prompt = f"Question: {question}\n"
        context = Context(question, [{"role": "prompt", "text": prompt, "ids": None}])
        for entity, year in zip(entities, years, strict=True):
            search = oracle.turn(context)
            found = protocol.information([fact_doc(entity, family.path[0], str(year), work_type, rng)])
            context.segments += [{"role": "model", "text": search, "ids": None}, {"role": "env", "text": found, "ids": None}]
        yield "".join(segment["text"] for segment in context.segments) + oracle.turn(context)


def compare_questions(run: Path, split: str) -> list[dict]:
    from dgpo_agent.world import load_questions

    return [q for q in load_questions(RunDir(run).world.questions(split)) if q["data_source"] == COMPARE]


def evaluate(model, tokenizer, run: Path, split: str, out: Path) -> dict:
    """Greedy EM on the split's compare questions and the compare measures of their trajectories."""
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.store import ChromaStore
    from dgpo_agent.training.config import AgentSettings
    from dgpo_agent.training.evaluate import evaluate_policy

    records = compare_questions(run, split)
    policy, store = TransformersPolicy(model.eval(), tokenizer), ChromaStore(RunDir(run).world.store, must_exist=True)
    metrics = evaluate_policy(policy, records, store, AgentSettings().config(max_new_tokens=96), out, label=split)
    by_id = {q["id"]: q for q in records}
    rows = [{**by_id[r["id"]], **r} for r in map(json.loads, out.read_text().splitlines())]
    measures = diagnose(rows)
    return {"n": len(records), "em": metrics[COMPARE]["em"], **{k: measures[k] for k in MEASURES}, **stated_steps(rows)}


def stated_steps(rows: list[dict]) -> dict[str, float]:
    """Of the answers whose thought states the comparison's step: how often its word is the one the
    question asks for; its choice (the year it gives, or the year in the place it names) is the
    earlier (later) of the two; where it gives both a year and a place, the place holds that year;
    where the thought gave the choice's year to one of the question's entities, the answer is that
    entity; and where it names a place, the answer is the entity of the fact stated in that place.
    Each is about a coin toss for a model that does not compare."""
    thoughts = [(row, _last_thought(row)) for row in rows]
    checks = [_step_checks(row, thought, m) for row, thought in thoughts if (m := STEP.search(thought))]

    def share(i: int) -> float | None:
        known = [c[i] for c in checks if c[i] is not None]
        return round(sum(known) / len(known), 4) if known else None

    return {"step_stated": round(len(checks) / len(rows), 4), **{key: share(i) for i, key in enumerate(STEP_CHECKS)}}


def _step_checks(row: dict, thought: str, step: re.Match) -> tuple[bool | None, ...]:
    word, first, second, year, place = step.groups()
    asked = COMPARED[parse_question(row["question"]).family.pick]
    in_place = (first, second)[ORDINALS.index(place)] if place else None
    choice = year or in_place
    facts = stated_facts(thought, row["entities"])
    stated = {year: entity for entity, year in facts}
    answered = normalize_answer(row["answer"] or "")
    return (
        word == asked,
        choice == (min if word == "earlier" else max)((first, second), key=int),
        in_place == year if year and place else None,
        answered == normalize_answer(stated[choice]) if choice in stated else None,
        answered == normalize_answer(facts[ORDINALS.index(place)][0]) if place and len(facts) == 2 else None,
    )


def stated_facts(thought: str, entities: list[str]) -> list[tuple[str, str]]:
    """(entity, year) for each of the question's entities whose year the thought states, name first
    ("B was founded in 1916") or year first ("In 1916, B was founded"), in the order it states them."""
    found = []
    for entity in entities:
        name = re.escape(entity)
        if m := re.search(rf"{name} (?:{YEAR_VERBS}) in (\d{{4}})|In (\d{{4}}), {name} (?:{YEAR_VERBS})\b", thought):
            found.append((m.start(), entity, m.group(1) or m.group(2)))
    return [(entity, year) for _, entity, year in sorted(found)]


def _last_thought(row: dict) -> str:
    return next((s["text"] for s in reversed(row["steps"]) if s["kind"] == "think"), "")


if __name__ == "__main__":
    main()
