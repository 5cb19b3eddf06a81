"""Can the teacher's model learn which of two years is earlier from drills alone?

The world's tokenizer writes each of the world's years as one token, so to compare two years a model
has to know the order of those tokens; nothing it is trained on states that order except the answers
to compare questions, one bit each. This probe fine-tunes the shipped teacher on endless drills in
the oracle's own words ("The earlier of 1962 and 1916 is 1916.", earlier or later at random, years in
the world's range) and measures greedy accuracy on held-out pairs (no held-out pair is drilled in
either order) as it trains. ``--style placed`` drills the step that names the place instead of the
year ("The earlier of 1962 and 1916 is the second."). ``--style keyed`` drills the step that binds the
chosen year to its entity: two facts about fresh names, said year first, then the step ("In 1962, A
was born. In 1916, B was born. The earlier of 1962 and 1916 is 1916, B."), and measures the name the
model writes after the chosen year it is given, on fresh names and held-out years.

    OMP_NUM_THREADS=1 python bench/year_order.py --steps 500 --every 50
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections.abc import Iterator
from pathlib import Path

from dgpo_agent.training.copy_curriculum import YEARS
from dgpo_agent.world import NameGenerator
from dgpo_agent.world.kb import RELATIONS
from dgpo_agent.world.oracle import COMPARED, comparison_step, statement

DRILLS_PER_TEXT = 4
YEAR_RELATIONS = tuple(r for r, (_, kind) in RELATIONS.items() if kind == "year")
Probe = tuple[str, int, int, tuple[str, str, str] | None]  # the year wanted, the two years, and (keyed) the relation and names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="optimiser steps of 8 sequences of 256 tokens")
    parser.add_argument("--every", type=int, default=100, help="measure the held-out accuracy every N steps")
    parser.add_argument("--held-out", type=int, default=300, help="year pairs never drilled")
    parser.add_argument("--style", choices=("stated", "placed", "keyed"), default="stated", help="the oracle's comparison style drilled")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-year-order"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/year_order.json"))
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, default_data_collator

    from dgpo_agent.training.pretrain import lm_dataset, pack
    from dgpo_agent.training.starting_point import ASSETS

    model = AutoModelForCausalLM.from_pretrained(ASSETS / "teacher")
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "teacher")
    probes = held_out_probes(args.seed, args.held_out, args.style)
    held_out = [(first, second) for _, first, second, _ in probes]
    curve = [{"step": 0, "accuracy": accuracy(model, tokenizer, probes, args.style)}]

    class Measure(TrainerCallback):
        def on_step_end(self, _args, state, control, **kwargs):
            if state.global_step % args.every == 0:
                curve.append({"step": state.global_step, "accuracy": accuracy(model, tokenizer, probes, args.style)})
                print(json.dumps(curve[-1]), flush=True)
                model.train()

    probed = [name for *_, named in probes if named for name in named[1:]]  # no drill shares a word with a probe's names
    stream = drills(random.Random(f"{args.seed}:drills"), {frozenset(p) for p in held_out}, args.style, NameGenerator(f"{args.seed}:drill-names", probed))
    sequences = pack(stream, tokenizer, 256, args.steps * 8)
    training = TrainingArguments(
        output_dir=str(args.work), max_steps=args.steps, per_device_train_batch_size=8, learning_rate=args.lr,
        warmup_steps=20, lr_scheduler_type="constant_with_warmup", seed=args.seed, use_cpu=True, report_to="none",
        save_strategy="no", logging_steps=args.every, disable_tqdm=True,
    )
    Trainer(model=model, args=training, train_dataset=lm_dataset(sequences), data_collator=default_data_collator, callbacks=[Measure()]).train()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "curve": curve}, indent=2) + "\n")


def held_out_probes(seed: int, count: int, style: str) -> list[Probe]:
    """``count`` year pairs never to be drilled, each as a probe: which year to pick, the pair in a
    random order, and (keyed) two fresh names and their relation."""
    rng = random.Random(f"{seed}:years")
    pairs = rng.sample(list(itertools.combinations(range(YEARS[0], YEARS[1] + 1), 2)), count)
    fresh = NameGenerator(f"{seed}:probe-names")
    return [(rng.choice(tuple(COMPARED)), *rng.sample(pair, 2), entities(fresh, rng, style)) for pair in pairs]


def drill(pick: str, first: int, second: int, style: str = "stated", named: tuple[str, str, str] | None = None) -> str:
    """One comparison in the oracle's words: "The earlier of 1962 and 1916 is 1916." (or, placed, "...
    is the second."); keyed, after the two facts about ``named``'s entities said year first ("In 1962,
    A was born. In 1916, B was born. The earlier of 1962 and 1916 is 1916, B.")."""
    if style != "keyed":
        return comparison_step(pick, [("", "", str(first)), ("", "", str(second))], style)
    relation, *names = named
    facts = [(name, relation, str(year)) for name, year in zip(names, (first, second), strict=True)]
    return " ".join([*(statement(fact, year_first=True) for fact in facts), comparison_step(pick, facts, style)])


def entities(names: NameGenerator, rng: random.Random, style: str) -> tuple[str, str, str] | None:
    """A year relation and two fresh names of its subjects' kind, for a keyed drill (None otherwise)."""
    if style != "keyed":
        return None
    relation = rng.choice(YEAR_RELATIONS)
    kind = RELATIONS[relation][0]
    return relation, names.name(kind), names.name(kind)


def drills(rng: random.Random, held_out: set[frozenset[int]], style: str = "stated", names: NameGenerator | None = None) -> Iterator[str]:
    """Endless texts of ``DRILLS_PER_TEXT`` drills in ``style`` on year pairs outside ``held_out``
    (keyed drills about fresh names from ``names``, which every keyed caller gives)."""
    while True:
        lines = []
        while len(lines) < DRILLS_PER_TEXT:
            first, second = rng.sample(range(YEARS[0], YEARS[1] + 1), 2)
            if frozenset((first, second)) not in held_out:
                lines.append(drill(rng.choice(tuple(COMPARED)), first, second, style, entities(names, rng, style)))
        yield "\n".join(lines)


def cue(text: str, style: str) -> tuple[str, str]:
    """A drill split into the prompt and what the model must complete: the last word (the year, or the
    place), or for keyed the name after the chosen year."""
    if style == "keyed":
        head, _, name = text.rpartition(", ")
        return head + ",", name.rstrip(".")
    head, _, last = text.rpartition(" ")
    return head, last.rstrip(".")


def accuracy(model, tokenizer, probes: list[Probe], style: str = "stated") -> float | dict[str, float]:
    """Greedy: the share of held-out drills the model completes right (``cue``); keyed, that share and
    the share whose completion is either of the two names (so a coin toss between them reads 0.5 of it)."""
    texts = [drill(*probe, style=style, named=named) for *probe, named in probes]
    prompts, wanted = zip(*(cue(text, style) for text in texts), strict=True)
    said = completions(model, tokenizer, list(prompts), 12 if style == "keyed" else 3)
    right = round(sum(s.startswith(w) for s, w in zip(said, wanted, strict=True)) / len(probes), 4)
    if style != "keyed":
        return right
    either = sum(any(s.startswith(name) for name in named[1:]) for s, (*_, named) in zip(said, probes, strict=True))
    return {"right": right, "names_one": round(either / len(probes), 4)}


def completions(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int | None = None) -> list[str]:
    """The model's greedy continuation of each prompt, stripped: left-padded batches of ``batch_size``
    prompts (None: all in one)."""
    import torch

    tokenizer.padding_side, tokenizer.pad_token = "left", tokenizer.eos_token
    model.eval()
    size, said = batch_size or max(len(prompts), 1), []
    for i in range(0, len(prompts), size):
        batch = tokenizer(prompts[i : i + size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        said += [s.strip() for s in tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)]
    return said


if __name__ == "__main__":
    main()
