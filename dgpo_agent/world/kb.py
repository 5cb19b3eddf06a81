"""The world's knowledge base: entities and single-valued, dated facts between them.

Every fact is ``(subject, relation) -> object``; a relation never has two values for a subject, so
every question about it has exactly one answer. Near-duplicate "distractor" entities get facts of
their own, which is what makes precise retrieval and reading necessary.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Callable

from dgpo_agent.errors import DGPOError
from dgpo_agent.world.names import NameGenerator

# relation -> (subject kind, object kind); "year" objects are four-digit strings.
RELATIONS: dict[str, tuple[str, str]] = {
    "born_in": ("person", "city"),
    "birth_year": ("person", "year"),
    "located_in": ("city", "country"),
    "founded_by": ("organisation", "person"),
    "founded_year": ("organisation", "year"),
    "headquartered_in": ("organisation", "city"),
    "created_by": ("work", "person"),
    "release_year": ("work", "year"),
    "published_by": ("work", "organisation"),
}
WORK_TYPES = ("book", "film", "album")
PUBLISHER_SHARE = 0.4  # organisations that publish works (split evenly over the work types)
LAST_YEAR = 2022  # founders are born by 1985 and found by 2015, so every work has room before it


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and rates of a world; the seed makes everything in it reproducible."""

    seed: int = 0
    countries: int = 24
    cities: int = 320
    people: int = 1200
    organisations: int = 520
    works: int = 720
    distractor_rate: float = 0.15  # share of entities that get a near-duplicate twin
    combine_rate: float = 0.3  # chance that a fact shares its passage with another fact of its subject
    filler_rate: float = 0.3  # chance that a passage carries a sentence stating no fact
    train_questions: int = 6000
    dev_questions: int = 300
    test_questions: int = 600
    split_fractions: tuple[float, float, float] = (0.75, 0.08, 0.17)

    @classmethod
    def preset(cls, size: str, seed: int = 0) -> WorldConfig:
        """``default`` (~5.5k passages) or ``small`` (~400 passages, for tests and smoke runs)."""
        if size not in PRESETS:
            raise DGPOError(f"unknown world size {size!r}: choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[size], seed=seed)


PRESETS = {
    "default": WorldConfig(),
    "small": WorldConfig(
        countries=6, cities=24, people=80, organisations=36, works=48,
        train_questions=600, dev_questions=60, test_questions=120,
    ),
}


@dataclass(frozen=True)
class Entity:
    """A named thing. ``subtype`` is the work type of a work, or what an organisation publishes."""

    name: str
    kind: str
    subtype: str = ""


@dataclass
class KB:
    """Entities by name, facts by ``(subject, relation)``, and the near-duplicate pairs."""

    entities: dict[str, Entity] = field(default_factory=dict)
    facts: dict[tuple[str, str], str] = field(default_factory=dict)
    near: list[tuple[str, str]] = field(default_factory=list)

    def add(self, entity: Entity) -> Entity:
        self.entities[entity.name] = entity
        return entity

    def of_kind(self, kind: str, subtype: str | None = None) -> list[Entity]:
        return [e for e in self.entities.values() if e.kind == kind and subtype in (None, e.subtype)]

    def year(self, subject: str, relation: str) -> int:
        return int(self.facts[(subject, relation)])

    def to_json(self) -> dict[str, Any]:
        return {
            "entities": [dataclasses.asdict(e) for e in self.entities.values()],
            "facts": [{"subject": s, "relation": r, "object": o} for (s, r), o in self.facts.items()],
            "near": [list(pair) for pair in self.near],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KB:
        return cls(
            entities={e["name"]: Entity(**e) for e in data["entities"]},
            facts={(f["subject"], f["relation"]): f["object"] for f in data["facts"]},
            near=[(a, b) for a, b in data["near"]],
        )


def build_kb(config: WorldConfig) -> KB:
    """Entities in dependency order (places, people, organisations, works), each with its facts."""
    rng = random.Random(f"{config.seed}:kb")
    names = NameGenerator(f"{config.seed}:names")
    kb = KB()
    countries = [kb.add(Entity(names.country(), "country")).name for _ in range(config.countries)]
    for name in _with_twins(kb, names, config, config.cities, names.city):
        kb.add(Entity(name, "city"))
        kb.facts[(name, "located_in")] = rng.choice(countries)
    _add_people(kb, names, rng, config)
    _add_organisations(kb, names, rng, config)
    _add_works(kb, names, rng, config)
    return kb


def _with_twins(kb: KB, names: NameGenerator, config: WorldConfig, total: int, make: Callable[[], str]) -> list[str]:
    """``total`` names of which about ``distractor_rate`` are near-duplicates of another one (the
    pairs are recorded in ``kb.near``)."""
    base = [make() for _ in range(round(total / (1 + config.distractor_rate)))]
    twins = [names.near(name) for name in base[: total - len(base)]]
    kb.near.extend(zip(base, twins))
    return base + twins


def _add_people(kb: KB, names: NameGenerator, rng: random.Random, config: WorldConfig) -> None:
    cities = [c.name for c in kb.of_kind("city")]
    for name in _with_twins(kb, names, config, config.people, names.person):
        kb.add(Entity(name, "person"))
        kb.facts[(name, "born_in")] = rng.choice(cities)
        kb.facts[(name, "birth_year")] = str(rng.randint(1900, 1985))


def _add_organisations(kb: KB, names: NameGenerator, rng: random.Random, config: WorldConfig) -> None:
    """Publishers of each work type first, then general organisations; founders are adults."""
    publishers = round(config.organisations * PUBLISHER_SHARE)
    kinds = [WORK_TYPES[i % len(WORK_TYPES)] for i in range(publishers)]
    kinds += [""] * (config.organisations - publishers)
    people, cities = [p.name for p in kb.of_kind("person")], [c.name for c in kb.of_kind("city")]
    for kind, count in ((k, kinds.count(k)) for k in ("", *WORK_TYPES)):
        for name in _with_twins(kb, names, config, count, lambda k=kind: names.organisation(k)):
            founder = rng.choice(people)
            kb.add(Entity(name, "organisation", kind))
            kb.facts[(name, "founded_by")] = founder
            kb.facts[(name, "founded_year")] = str(min(kb.year(founder, "birth_year") + rng.randint(22, 55), 2015))
            kb.facts[(name, "headquartered_in")] = rng.choice(cities)


def _add_works(kb: KB, names: NameGenerator, rng: random.Random, config: WorldConfig) -> None:
    """Works released after their creator came of age and their publisher was founded."""
    people = [p.name for p in kb.of_kind("person")]
    publishers = {t: [o.name for o in kb.of_kind("organisation", t)] for t in WORK_TYPES}
    for name in _with_twins(kb, names, config, config.works, names.work):
        subtype = rng.choice(WORK_TYPES)
        creator, publisher = rng.choice(people), rng.choice(publishers[subtype])
        earliest = max(kb.year(creator, "birth_year") + 20, kb.year(publisher, "founded_year") + 1)
        kb.add(Entity(name, "work", subtype))
        kb.facts[(name, "created_by")] = creator
        kb.facts[(name, "release_year")] = str(rng.randint(earliest, LAST_YEAR))
        kb.facts[(name, "published_by")] = publisher
