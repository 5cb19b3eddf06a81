"""The question grammar: every question family, its phrasings, and the parser that inverts them.

A family says how a question is answered: follow ``path`` (relations) from the entity it names, or,
for a comparison, read ``path``'s year for two entities and pick the earlier (``min``) or later
(``max``). The generator fills the phrasings; the oracle parses a question with the same phrasings
compiled to regexes, so it needs no answer key.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache

from dgpo_agent.world.corpus import WORK_VOCAB
from dgpo_agent.world.kb import WORK_TYPES

DATA_SOURCES = ("world_single", "world_bridge", "world_compare", "world_3hop")


@dataclass(frozen=True)
class Family:
    """One kind of question. Phrasings use ``{x}`` (or ``{a}``/``{b}`` for comparisons) and work vocabulary."""

    name: str
    source: str
    subject: str  # kind of the entity (or entities) the question names
    path: tuple[str, ...]
    phrasings: tuple[str, ...]
    pick: str = ""  # "min" or "max" for comparisons

    @property
    def hops(self) -> int:
        return 2 if self.pick else len(self.path)


def _single(name: str, subject: str, path: tuple[str, ...], *phrasings: str) -> Family:
    """A family that follows ``path``; its data source is named by the hop count."""
    source = {1: "world_single", 2: "world_bridge", 3: "world_3hop"}[len(path)]
    return Family(name, source, subject, path, phrasings)


def _compare(name: str, subject: str, relation: str, pick: str, *phrasings: str) -> Family:
    return Family(name, "world_compare", subject, (relation,), phrasings, pick)


FAMILIES: tuple[Family, ...] = (
    # one hop
    _single("birthplace", "person", ("born_in",),
            "Where was {x} born?", "In which city was {x} born?", "What is the birthplace of {x}?",
            "{x} was born in which city?"),
    _single("birth_year", "person", ("birth_year",),
            "When was {x} born?", "In what year was {x} born?", "What is the birth year of {x}?"),
    _single("city_country", "city", ("located_in",),
            "Which country is {x} in?", "In which country is the city of {x}?", "{x} is a city in which country?"),
    _single("founder", "organisation", ("founded_by",),
            "Who founded {x}?", "Who is the founder of {x}?", "{x} was founded by whom?"),
    _single("founding_year", "organisation", ("founded_year",),
            "When was {x} founded?", "In what year was {x} founded?", "What year was {x} established?"),
    _single("headquarters", "organisation", ("headquartered_in",),
            "Where is {x} headquartered?", "In which city is {x} based?", "Where are the headquarters of {x}?"),
    _single("creator", "work", ("created_by",),
            "Who {create_verb} {x}?", "Who is the {creator_noun} of {x}?", "Who {create_verb} the {work_noun} {x}?"),
    _single("release_year", "work", ("release_year",),
            "When was {x} {release_verb}?", "In what year was the {work_noun} {x} {release_verb}?",
            "When did {x} come out?"),
    _single("publisher", "work", ("published_by",),
            "Which {publisher_noun} {publish_verb} {x}?", "What is the {publisher_noun} of the {work_noun} {x}?"),
    # two hops
    _single("person_country", "person", ("born_in", "located_in"),
            "In which country was {x} born?", "{x} was born in which country?",
            "What is the country of birth of {x}?"),
    _single("founder_birthplace", "organisation", ("founded_by", "born_in"),
            "Where was the founder of {x} born?", "In which city was the founder of {x} born?"),
    _single("founder_birth_year", "organisation", ("founded_by", "birth_year"),
            "When was the founder of {x} born?", "In what year was the founder of {x} born?"),
    _single("headquarters_country", "organisation", ("headquartered_in", "located_in"),
            "In which country is {x} headquartered?", "{x} is based in which country?",
            "In which country are the headquarters of {x}?"),
    _single("creator_birthplace", "work", ("created_by", "born_in"),
            "Where was the {creator_noun} of {x} born?",
            "In which city was the {creator_noun} of the {work_noun} {x} born?"),
    _single("creator_birth_year", "work", ("created_by", "birth_year"),
            "When was the {creator_noun} of {x} born?", "In what year was the {creator_noun} of {x} born?"),
    _single("publisher_founder", "work", ("published_by", "founded_by"),
            "Who founded the {publisher_noun} that {publish_verb} {x}?",
            "Who is the founder of the {publisher_noun} of {x}?"),
    _single("publisher_headquarters", "work", ("published_by", "headquartered_in"),
            "Where is the {publisher_noun} of {x} headquartered?",
            "In which city is the {publisher_noun} that {publish_verb} {x} based?"),
    # three hops
    _single("founder_country", "organisation", ("founded_by", "born_in", "located_in"),
            "In which country was the founder of {x} born?", "What is the country of birth of the founder of {x}?"),
    _single("creator_country", "work", ("created_by", "born_in", "located_in"),
            "In which country was the {creator_noun} of {x} born?",
            "What is the country of birth of the {creator_noun} of the {work_noun} {x}?"),
    _single("publisher_country", "work", ("published_by", "headquartered_in", "located_in"),
            "In which country is the {publisher_noun} of {x} headquartered?",
            "In which country is the {publisher_noun} that {publish_verb} {x} based?"),
    _single("publisher_founder_birthplace", "work", ("published_by", "founded_by", "born_in"),
            "Where was the founder of the {publisher_noun} that {publish_verb} {x} born?",
            "In which city was the founder of the {publisher_noun} of {x} born?"),
    # comparisons
    _compare("born_first", "person", "birth_year", "min",
             "Who was born first, {a} or {b}?", "Who was born earlier, {a} or {b}?", "Who is older, {a} or {b}?"),
    _compare("born_later", "person", "birth_year", "max",
             "Who was born later, {a} or {b}?", "Who is younger, {a} or {b}?"),
    _compare("founded_first", "organisation", "founded_year", "min",
             "Which was founded first, {a} or {b}?", "Which organisation is older, {a} or {b}?",
             "Which was established earlier, {a} or {b}?"),
    _compare("founded_later", "organisation", "founded_year", "max",
             "Which was founded later, {a} or {b}?", "Which organisation is younger, {a} or {b}?"),
    _compare("released_first", "work", "release_year", "min",
             "Which came out first, {a} or {b}?", "Which was released earlier, {a} or {b}?"),
    _compare("released_later", "work", "release_year", "max",
             "Which came out later, {a} or {b}?", "Which was released more recently, {a} or {b}?"),
)


@dataclass(frozen=True)
class Parsed:
    """A question understood: its family, the entity names it mentions as written, and the work type
    its wording implies ("" when it names none, or could be several)."""

    family: Family
    entities: tuple[str, ...]
    work_type: str = ""


def fill(phrasing: str, entities: tuple[str, ...], work_type: str = "") -> str:
    """A question from a phrasing, the entity names, and the work type for work vocabulary."""
    slots = dict(zip(("a", "b") if len(entities) == 2 else ("x",), entities))
    return phrasing.format(**slots, **WORK_VOCAB.get(work_type, {}))


def parse_question(question: str) -> Parsed | None:
    """The family and entities of any question the grammar can produce; None for anything else."""
    text = " ".join(question.split()).rstrip("?").strip() + "?"
    for pattern, family in _patterns():
        match = pattern.fullmatch(text)
        if match:
            names = tuple(match[g].strip() for g in ("x", "a", "b") if g in pattern.groupindex)
            return Parsed(family, names, _work_type(match))
    return None


def _work_type(match: re.Match[str]) -> str:
    """The one work type whose vocabulary every vocabulary word of the question belongs to."""
    types = set(WORK_TYPES)
    for group, word in match.groupdict().items():
        if group.startswith("v_"):
            slot = group[2:].rstrip("0123456789")
            types &= {t for t in WORK_TYPES if WORK_VOCAB[t][slot].casefold() == word.casefold()}
    return types.pop() if len(types) == 1 else ""


@lru_cache(maxsize=None)
def _patterns() -> tuple[tuple[re.Pattern[str], Family], ...]:
    """Every phrasing as a case-insensitive regex, the most specific (longest literal text) first,
    so that "Where was the founder of X born?" is never read as "Where was {x} born?"."""
    compiled = [(_literal_length(p), _compile(p), f) for f in FAMILIES for p in f.phrasings]
    return tuple((pattern, family) for _, pattern, family in sorted(compiled, key=lambda c: -c[0]))


def _literal_length(phrasing: str) -> int:
    return sum(len(literal) for literal, *_ in string.Formatter().parse(phrasing))


def _compile(phrasing: str) -> re.Pattern[str]:
    parts = []
    for i, (literal, field_name, _, _) in enumerate(string.Formatter().parse(phrasing)):
        parts.append(re.escape(literal))
        if field_name in ("x", "a", "b"):
            parts.append(f"(?P<{field_name}>[^?,]+?)")
        elif field_name:
            words = sorted({re.escape(WORK_VOCAB[w][field_name]) for w in WORK_TYPES})
            parts.append(f"(?P<v_{field_name}{i}>" + "|".join(words) + ")")
    return re.compile("".join(parts), re.IGNORECASE)
