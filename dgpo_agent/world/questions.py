"""Questions with gold answers and evidence, in entity-disjoint train/dev/test splits.

Question subjects (people, organisations, works, cities) are partitioned into splits first; a
question joins a split only if every entity it names belongs to that split, so no test question
names anything a training question names. The corpus is shared by all splits.
"""

from __future__ import annotations

import random
from typing import Iterator

from dgpo_agent.world.corpus import Evidence
from dgpo_agent.world.grammar import DATA_SOURCES, FAMILIES, Family, fill, parse_question
from dgpo_agent.world.kb import KB, WorldConfig

SPLITS = ("train", "dev", "test")
SUBJECT_KINDS = ("person", "organisation", "work", "city")


def generate_questions(
    kb: KB, evidence: Evidence, split_of: dict[str, str], config: WorldConfig
) -> dict[str, list[dict]]:
    """Every split's questions, balanced over data sources and, within one, over families."""
    rng = random.Random(f"{config.seed}:questions")
    sizes = dict(zip(SPLITS, (config.train_questions, config.dev_questions, config.test_questions)))
    splits = {}
    for split, size in sizes.items():
        members = [e.name for e in kb.entities.values() if split_of.get(e.name) == split]
        records = []
        for source, quota in zip(DATA_SOURCES, _quotas(size, len(DATA_SOURCES))):
            families = [f for f in FAMILIES if f.source == source]
            pools = [list(_candidates(kb, evidence, f, members, quota, rng)) for f in families]
            records += _round_robin(pools, quota, rng)
        rng.shuffle(records)
        splits[split] = [{"id": f"{split}_{i:05d}", **r} for i, r in enumerate(records)]
    return splits


def partition(kb: KB, config: WorldConfig) -> dict[str, str]:
    """Each question-subject entity's split, cut per kind at the configured fractions."""
    rng = random.Random(f"{config.seed}:splits")
    train, dev, _ = config.split_fractions
    split_of = {}
    for kind in SUBJECT_KINDS:
        names = [e.name for e in kb.of_kind(kind)]
        rng.shuffle(names)
        train_end = round(len(names) * train)
        dev_end = train_end + round(len(names) * dev)
        for i, name in enumerate(names):
            split_of[name] = SPLITS[0] if i < train_end else SPLITS[1] if i < dev_end else SPLITS[2]
    return split_of


def _quotas(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def _candidates(
    kb: KB, evidence: Evidence, family: Family, members: list[str], quota: int, rng: random.Random
) -> Iterator[dict]:
    """Questions of one family about entities of one split."""
    pool = [name for name in members if kb.entities[name].kind == family.subject]
    if family.pick:
        yield from _comparisons(kb, evidence, family, pool, quota, rng)
        return
    for name in pool:
        answer, pids = _walk(kb, evidence, name, family.path)
        yield _record(kb, family, (name,), answer, pids, rng)


def _walk(kb: KB, evidence: Evidence, start: str, path: tuple[str, ...]) -> tuple[str, list[str]]:
    """The answer at the end of ``path`` and the passages stating each step."""
    node, pids = start, []
    for relation in path:
        pids += evidence[(node, relation)]
        node = kb.facts[(node, relation)]
    return node, pids


def _comparisons(
    kb: KB, evidence: Evidence, family: Family, pool: list[str], quota: int, rng: random.Random
) -> Iterator[dict]:
    """Up to ``quota`` distinct pairs with different years (so the answer is unique)."""
    relation, seen = family.path[0], set()
    for _ in range(quota * 10 if len(pool) > 1 else 0):
        a, b = rng.sample(pool, 2)
        years = kb.year(a, relation), kb.year(b, relation)
        if years[0] == years[1] or frozenset((a, b)) in seen:
            continue
        seen.add(frozenset((a, b)))
        answer = (min if family.pick == "min" else max)((a, b), key=lambda n: kb.year(n, relation))
        yield _record(kb, family, (a, b), answer, evidence[(a, relation)] + evidence[(b, relation)], rng)
        if len(seen) == quota:
            return


def _record(
    kb: KB, family: Family, entities: tuple[str, ...], answer: str, pids: list[str], rng: random.Random
) -> dict:
    """A question record; checks that the grammar parses the question back to what was meant."""
    question = fill(rng.choice(family.phrasings), entities, kb.entities[entities[0]].subtype)
    parsed = parse_question(question)
    if parsed is None or parsed.family != family or parsed.entities != entities:
        raise RuntimeError(f"question grammar is ambiguous: {question!r} does not parse back as {family.name}")
    return {
        "question": question,
        "golden_answers": [answer],
        "data_source": family.source,
        "family": family.name,
        "evidence": pids,
        "hops": family.hops,
        "entities": list(entities),
    }


def _round_robin(pools: list[list[dict]], quota: int, rng: random.Random) -> list[dict]:
    """Up to ``quota`` records taken one family at a time, so every family is represented."""
    for pool in pools:
        rng.shuffle(pool)
    taken: list[dict] = []
    depth = 0
    while len(taken) < quota and any(depth < len(p) for p in pools):
        taken += [p[depth] for p in pools if depth < len(p)][: quota - len(taken)]
        depth += 1
    return taken
