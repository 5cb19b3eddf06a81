"""Does a teacher compare once the keyed comparison step is in its training from the start?

The shipped teacher picks the right one of a compare question's two entities about half the time,
and 600 steps of fine-tuning on top of it with the keyed step (``OraclePolicy(comparison="keyed")``)
and drills that bind a year to its name did not make it use the step in its answers
(``compare_step.py``). This bench trains a teacher by the shipped recipe instead, from a base teacher
pretrained as ``dgpo-agent prepare`` pretrains it: the teacher stage's steps of SFT on the oracle's
correct demonstrations of every training question, a fifth of the examples from the pretraining
stream, but with the demonstrations' comparisons keyed and ``--drill-share`` of the examples keyed
drills about fresh names (``compare_step.year_drills``, the ``bound`` arm's).

It reports greedy test EM per data source (the shipped teacher's are in its ``record.json``), the
compare step measured part by part on the dev and test compare questions (``compare_step.evaluate``),
and where the step's name goes wrong (``binding``): given each test answer's two stated facts and
the right chosen year, the name the teacher writes next in the answer's whole context, in its final
thought alone, and in the facts alone as a drill; and on keyed drills about fresh names
(``year_order.held_out_probes``; here their year pairs may have been drilled, their names never).

    dgpo-agent train --stop-after index           # the world and its store
    OMP_NUM_THREADS=2 python bench/keyed_teacher.py --run runs/tiny
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from pathlib import Path

from compare_step import evaluate as compare_measures  # bench/, beside this script
from compare_step import stated_facts, year_drills
from copy_curriculum import demonstrations, evaluate, supervised
from year_order import accuracy, completions, drills, held_out_probes

from dgpo_agent.training.run import RunDir


def main() -> None:
    from dgpo_agent.training.config import BaseSettings, TeacherSettings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a `dgpo-agent train` run directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base-steps", type=int, default=BaseSettings().teacher_steps)
    parser.add_argument("--steps", type=int, default=TeacherSettings().steps, help="the teacher stage's SFT steps of 8 examples")
    parser.add_argument("--drill-share", type=float, default=0.25, help="the share of keyed drills among the examples")
    parser.add_argument("--base-drill-share", type=float, default=0.0, help="the share of keyed drills among the base teacher's pretraining sequences (0: the shipped stream)")
    parser.add_argument("--base-only", action="store_true", help="pretrain the base teacher and probe it on keyed drills, nothing more")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-keyed-teacher"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/keyed_teacher.json"))
    args = parser.parse_args()

    result = train_and_test(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("base_fresh_drills", "test", "compare", "binding")}, indent=1))


def train_and_test(args: argparse.Namespace) -> dict:
    """The keyed teacher (trained once: a finished one is reused), then its scores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    work = args.work / (f"seed{args.seed}" + (f"-base-drills{args.base_drill_share}" if args.base_drill_share else ""))
    trained = work / ("base.json" if args.base_only else "train.json")
    if not trained.is_file():
        trained.write_text(json.dumps(train(args, work), indent=2) + "\n")
    settings = {k: getattr(args, k) for k in ("seed", "base_steps", "steps", "drill_share", "base_drill_share")}
    if args.base_only:
        return {**settings, **json.loads(trained.read_text())}
    model, tokenizer = AutoModelForCausalLM.from_pretrained(work / "model"), AutoTokenizer.from_pretrained(work / "model")
    world = RunDir(args.run).world
    compare = {split: compare_measures(model, tokenizer, args.run, split, work / f"compare-{split}.jsonl") for split in ("dev", "test")}
    rows = [json.loads(line) for line in (work / "compare-test.jsonl").open()]
    return {
        **settings, **json.loads(trained.read_text()),
        "test": evaluate(model, tokenizer, world, 600, work / "test.jsonl"),
        "compare": compare,
        "binding": {**binding(model, tokenizer, rows), "fresh_drills": accuracy(model, tokenizer, held_out_probes(args.seed, 300, "keyed"), "keyed")},
    }


def train(args: argparse.Namespace, work: Path) -> dict:
    """The base teacher (resumable) and its keyed-drill probe, then (unless ``--base-only``) the
    teacher stage with keyed demonstrations and drills."""
    from transformers import AutoTokenizer

    from dgpo_agent.store import read_corpus
    from dgpo_agent.training.config import BaseSettings
    from dgpo_agent.training.copy_curriculum import world_names
    from dgpo_agent.training.pretrain import PretrainConfig, pretrain
    from dgpo_agent.training.starting_point import ASSETS
    from dgpo_agent.training.zoo import TEACHER, build_model

    corpus = list(read_corpus(RunDir(args.run).world.corpus))
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "teacher")  # the shipped world tokenizer
    base = BaseSettings()
    model = build_model(TEACHER, tokenizer, seed=args.seed)
    start = time.perf_counter()
    config = PretrainConfig(
        steps=args.base_steps, batch_size=base.batch_size, seq_len=base.seq_len, lr=base.lr,
        copy_fraction=base.copy_fraction, seed=args.seed, save_dir=str(work / "base"),
    )
    sequences = base_sequences(tokenizer, corpus, config, args.base_drill_share)
    summary = {
        "pretrain": pretrain(model, tokenizer, corpus, config, sequences),
        "base_fresh_drills": accuracy(model, tokenizer, held_out_probes(args.seed, 300, "keyed"), "keyed"),
    }
    if args.base_only:
        return summary
    demos = demonstrations(args.run, args.work, "keyed")
    extra = year_drills(tokenizer, demos, args.drill_share, args.seed, "keyed", world_names(corpus))
    sft = supervised(model, tokenizer, corpus, demos, args.steps, base.copy_fraction, args.seed, work / "sft", extra=extra)
    model.save_pretrained(work / "model")
    tokenizer.save_pretrained(work / "model")
    return {**summary, "sft": sft, "train_minutes": round((time.perf_counter() - start) / 60, 1)}


def base_sequences(tokenizer, corpus: list[dict], config, share: float) -> list[list[int]]:
    """The base stage's pretraining sequences, with ``share`` of them (drawn at random, so passages and
    copy drills give way alike) replaced by keyed drills about names that share no word with the
    world's."""
    from dgpo_agent.training.copy_curriculum import world_names
    from dgpo_agent.training.pretrain import pack, training_sequences
    from dgpo_agent.world import NameGenerator

    sequences = training_sequences(tokenizer, corpus, config)
    count = round(len(sequences) * share)
    if not count:
        return sequences
    rng = random.Random(f"{config.seed}:base-drills")
    names = NameGenerator(f"{config.seed}:base-drill-names", world_names(corpus))
    return rng.sample(sequences, len(sequences) - count) + pack(drills(rng, set(), "keyed", names), tokenizer, config.seq_len, count)


STEP_HEAD = re.compile(r"The (earlier|later) of \d{4} and \d{4} is")
CONTEXTS = ("context", "thought", "drill")


def binding_probes(rows: list[dict]) -> list[dict]:
    """For each keyed answer that states two different years for the question's two entities: its
    text up to the step, with the step rewritten to give the right chosen year, in three contexts
    (the whole episode; the final thought alone; the two facts alone, as a drill), and the name wanted
    next, the one stated with that year."""
    probes = []
    for row in rows:
        final = row["segments"][-1]["text"]
        step, facts = STEP_HEAD.search(final), stated_facts(final, row["entities"])
        if not step or len(facts) != 2 or facts[0][1] == facts[1][1]:
            continue
        entity_of = {year: entity for entity, year in facts}
        chosen = (min if step.group(1) == "earlier" else max)(entity_of, key=int)
        cue = f"The {step.group(1)} of {facts[0][1]} and {facts[1][1]} is {chosen},"
        thought = final[: step.start()]
        facts_alone = thought[thought.index("In "):]
        before = "".join(segment["text"] for segment in row["segments"][:-1])
        probes.append({"context": before + thought + cue, "thought": thought + cue, "drill": facts_alone + cue,
                       "wanted": entity_of[chosen], "first": facts[0][0]})
    return probes


def binding(model, tokenizer, rows: list[dict]) -> dict:
    """Greedy, per context: the share of ``binding_probes`` whose next words are the wanted name, and
    the share that are the first stated fact's name (a model that copies the first reads 0.5 / 1.0)."""
    probes = binding_probes(rows)
    result: dict = {"n": len(probes)}
    for context in CONTEXTS:
        said = completions(model, tokenizer, [p[context] for p in probes], 12, batch_size=16)
        result[context] = {key: round(sum(s.startswith(p[key]) for s, p in zip(said, probes, strict=True)) / len(probes), 4) for key in ("wanted", "first")}
    return result


if __name__ == "__main__":
    main()
