"""Passages that state the knowledge base in varied English, and the reader that inverts them.

A template is a sentence with ``{s}`` (the subject), one placeholder per relation it states, and
optionally work vocabulary (``{work_noun}`` …). The same templates compiled to regular expressions
are the oracle's reader, so whatever the corpus can say, the oracle can read.
"""

from __future__ import annotations

import random
import re
import string
from dataclasses import dataclass
from functools import lru_cache

from dgpo_agent.world.kb import KB, RELATIONS, WORK_TYPES, Entity, WorldConfig

# Words that change with the type of a work; questions use the same slots.
WORK_VOCAB: dict[str, dict[str, str]] = {
    "book": {
        "work_noun": "book", "a_work_noun": "a book", "creator_noun": "author", "create_verb": "wrote",
        "made_by": "written by", "release_verb": "published", "publisher_noun": "publisher",
        "publish_verb": "published",
    },
    "film": {
        "work_noun": "film", "a_work_noun": "a film", "creator_noun": "director", "create_verb": "directed",
        "made_by": "directed by", "release_verb": "released", "publisher_noun": "studio", "publish_verb": "produced",
    },
    "album": {
        "work_noun": "album", "a_work_noun": "an album", "creator_noun": "artist", "create_verb": "recorded",
        "made_by": "recorded by", "release_verb": "released", "publisher_noun": "label", "publish_verb": "released",
    },
}

# Keyed by the relations a sentence states; two-relation sentences combine facts of one subject.
TEMPLATES: dict[tuple[str, ...], tuple[str, ...]] = {
    ("born_in",): (
        "{s} was born in the city of {born_in}.",
        "{s} is a native of the city of {born_in}.",
        "Born in the city of {born_in}, {s} grew up there.",
    ),
    ("birth_year",): (
        "{s} was born in the year {birth_year}.",
        "The birth year of {s} is {birth_year}.",
        "Born in the year {birth_year}, {s} came of age in a time of change.",
    ),
    ("born_in", "birth_year"): (
        "{s} was born in the city of {born_in} in the year {birth_year}.",
        "Born in the city of {born_in} in the year {birth_year}, {s} grew up there.",
    ),
    ("located_in",): (
        "{s} is a city in the country of {located_in}.",
        "The city of {s} is located in {located_in}.",
        "{s} lies in the country of {located_in}.",
    ),
    ("founded_by",): (
        "{s} was founded by {founded_by}.",
        "{founded_by} founded {s}.",
        "The founder of {s} is {founded_by}.",
    ),
    ("founded_year",): (
        "{s} was founded in the year {founded_year}.",
        "{s} was established in {founded_year}.",
        "Founded in the year {founded_year}, {s} has grown steadily since.",
    ),
    ("headquartered_in",): (
        "{s} is headquartered in the city of {headquartered_in}.",
        "{s} has its headquarters in {headquartered_in}.",
        "The headquarters of {s} are in the city of {headquartered_in}.",
    ),
    ("founded_by", "founded_year"): (
        "{s} was founded by {founded_by} in the year {founded_year}.",
        "In {founded_year}, {founded_by} founded {s}.",
    ),
    ("founded_by", "headquartered_in"): (
        "{s}, founded by {founded_by}, is headquartered in the city of {headquartered_in}.",
    ),
    ("created_by",): (
        "{s} is {a_work_noun} {made_by} {created_by}.",
        "{created_by} {create_verb} the {work_noun} {s}.",
        "The {creator_noun} of {s} is {created_by}.",
    ),
    ("release_year",): (
        "{s} was {release_verb} in the year {release_year}.",
        "The {work_noun} {s} first came out in {release_year}.",
        "{s} came out in the year {release_year}.",
    ),
    ("published_by",): (
        "{s} was {publish_verb} by {published_by}.",
        "The {publisher_noun} of {s} is {published_by}.",
        "{published_by} {publish_verb} the {work_noun} {s}.",
    ),
    ("created_by", "release_year"): (
        "{s} is a {release_year} {work_noun} {made_by} {created_by}.",
        "{created_by} {create_verb} {s} in the year {release_year}.",
    ),
    ("published_by", "release_year"): (
        "{s} was {publish_verb} by {published_by} in the year {release_year}.",
    ),
}

# Sentences that state no fact; ``{place}`` and ``{year}`` are random, so they only distract.
FILLERS: dict[str, tuple[str, ...]] = {
    "person": (
        "Little else is recorded about the early life of {s}.",
        "{s} spent the summer of {year} in {place}.",
        "Letters written by {s} survive in several archives.",
    ),
    "city": (
        "{s} is known for its old market square.",
        "A large fair was held in {s} in {year}.",
        "Travellers often describe {s} as quiet and green.",
    ),
    "organisation": (
        "{s} employs a small permanent staff.",
        "{s} held a large conference in {place} in {year}.",
        "{s} is known for its distinctive logo.",
    ),
    "work": (
        "Critics were divided about {s} at first.",
        "A retrospective on {s} was held in {place} in {year}.",
        "{s} is still widely discussed.",
    ),
}

Evidence = dict[tuple[str, str], list[str]]  # (subject, relation) -> ids of the passages stating it

NAME = r"[A-Z][a-z]+(?: [A-Z][a-z]+)*"
YEAR = r"\d{4}"


@dataclass(frozen=True)
class Passage:
    """One corpus record before ids are assigned, with the facts it states."""

    title: str
    text: str
    facts: tuple[tuple[str, str], ...]  # (subject, relation)


def build_corpus(kb: KB, config: WorldConfig) -> tuple[list[dict], Evidence]:
    """All passages (shuffled, with ids ``p000000``…) and, for every fact, the passages stating it."""
    rng = random.Random(f"{config.seed}:corpus")
    places = [c.name for c in kb.of_kind("city")]
    passages = []
    for entity in kb.entities.values():
        for relations in _groups(kb, entity, rng, config.combine_rate):
            filler = _filler(entity, rng, places) if rng.random() < config.filler_rate else None
            passages.append(_passage(kb, entity, relations, rng, filler))
    rng.shuffle(passages)
    records, evidence = [], {}
    for i, passage in enumerate(passages):
        pid = f"p{i:06d}"
        records.append({"id": pid, "title": passage.title, "text": passage.text})
        for fact in passage.facts:
            evidence.setdefault(fact, []).append(pid)
    return records, evidence


def _groups(kb: KB, entity: Entity, rng: random.Random, combine_rate: float) -> list[tuple[str, ...]]:
    """The subject's relations, shuffled and grouped into passages of one or two facts."""
    relations = [r for r in RELATIONS if (entity.name, r) in kb.facts]
    rng.shuffle(relations)
    groups = []
    while relations:
        first = relations.pop()
        partner = next((r for r in relations if _key(first, r) in TEMPLATES), None)
        if partner is not None and rng.random() < combine_rate:
            relations.remove(partner)
            groups.append(_key(first, partner))
        else:
            groups.append((first,))
    return groups


def _key(a: str, b: str) -> tuple[str, ...]:
    """The TEMPLATES key of two relations, in whichever order it is written."""
    return (a, b) if (a, b) in TEMPLATES else (b, a)


def _filler(entity: Entity, rng: random.Random, places: list[str]) -> str:
    template = rng.choice(FILLERS[entity.kind])
    return template.format(s=entity.name, place=rng.choice(places), year=rng.randint(1900, 2022))


def _passage(kb: KB, entity: Entity, relations: tuple[str, ...], rng: random.Random, filler: str | None) -> Passage:
    """A passage titled by its subject that states ``relations``, with the filler before or after.

    It is read back at once: a template that states more, less or other than it should fails here.
    """
    vocab = WORK_VOCAB.get(entity.subtype, {}) if entity.kind == "work" else {}
    objects = {r: kb.facts[(entity.name, r)] for r in relations}
    sentences = [rng.choice(TEMPLATES[relations]).format(s=entity.name, **objects, **vocab)]
    if filler is not None:
        sentences.insert(rng.randrange(2), filler)
    text = " ".join(sentences)
    if read_facts(text) != {(entity.name, r): o for r, o in objects.items()}:
        raise RuntimeError(f"passage templates are ambiguous: {text!r} does not read back as {objects}")
    return Passage(entity.name, text, tuple((entity.name, r) for r in relations))


# ------------------------------------------------------------------------------------------ reading


@lru_cache(maxsize=None)
def _patterns() -> tuple[tuple[re.Pattern[str], tuple[str, ...]], ...]:
    """Every template as a regex with named groups ``s`` and one per relation."""
    return tuple((_compile(t), key) for key, templates in TEMPLATES.items() for t in templates)


def _compile(template: str) -> re.Pattern[str]:
    parts = []
    for literal, field_name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if field_name == "s":
            parts.append(f"(?P<s>{NAME})")
        elif field_name in RELATIONS:
            parts.append(f"(?P<{field_name}>{YEAR if RELATIONS[field_name][1] == 'year' else NAME})")
        elif field_name:
            parts.append("(?:" + "|".join(sorted({re.escape(WORK_VOCAB[w][field_name]) for w in WORK_TYPES})) + ")")
    return re.compile("".join(parts))


def read_facts(text: str) -> dict[tuple[str, str], str]:
    """Every fact a passage states, as ``(subject, relation) -> object`` (the subject as written)."""
    facts = {}
    for pattern, relations in _patterns():
        for match in pattern.finditer(text):
            for relation in relations:
                facts[(match["s"], relation)] = match[relation]
    return facts
