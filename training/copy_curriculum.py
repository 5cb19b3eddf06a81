"""The copy curriculum, and the probe that measures what it is for: copying names never seen before.

The feasibility study (docs/tiny-world.md) found that a tiny model fails on unseen entities because it cannot copy a name it
has never produced from the question or a document into its next query; a share of pretraining on
protocol-shaped text about fresh random names made copying emerge. The names come from a
``NameGenerator`` with the world reserved, so no world name or answer is ever taught here; the
sentences, questions and the agent's turns come from the world's own grammar and its oracle, so the
curriculum reads exactly like retrieved documents and demonstrations.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dgpo_agent import protocol
from dgpo_agent.backends.base import Context
from dgpo_agent.state import Doc
from dgpo_agent.world import NameGenerator, OraclePolicy
from dgpo_agent.world.corpus import TEMPLATES, WORK_VOCAB, read_facts
from dgpo_agent.world.grammar import FAMILIES, Family, fill
from dgpo_agent.world.kb import RELATIONS, WORK_TYPES
from dgpo_agent.world.names import KINDS

if TYPE_CHECKING:
    import torch

DRILL_SHARE = 0.25  # examples that are "Name: N. Repeat: N." drills; the rest are search episodes
DRILLS_PER_EXAMPLE = 3
MAX_DISTRACTORS = 2  # documents besides the answer's, about near-named or other fresh entities
YEARS = (1900, 2022)
# The probe copies an entity (not a year) from a document, so it uses families whose first fact names one.
PROBE_FAMILIES = tuple(f for f in FAMILIES if not f.pick and RELATIONS[f.path[0]][1] != "year")


def world_names(corpus: Iterable[dict]) -> set[str]:
    """Every entity name the corpus mentions: passage titles and the entities their facts name."""
    names = set()
    for record in corpus:
        names.add(record["title"])
        for (subject, _), obj in read_facts(record["text"]).items():
            names.add(subject)
            if not obj.isdigit():
                names.add(obj)
    return names


def copy_examples(seed: int, reserved: Iterable[str], n: int | None = None) -> Iterator[str]:
    """``n`` curriculum texts (endless when None) about fresh names that share no word with ``reserved``."""
    rng = random.Random(f"{seed}:copy")
    names = NameGenerator(f"{seed}:names", reserved)
    for _ in itertools.count() if n is None else range(n):
        yield _drills(names, rng) if rng.random() < DRILL_SHARE else episode(names, rng).text


@dataclass(frozen=True)
class Episode:
    """Two turns of a search about fresh names: the first search, the documents it finds (the answer's
    one among distractors) and the next action, which names ``found``, an entity only the documents state."""

    question: str
    first: str
    observation: str
    second: str
    found: str

    @property
    def text(self) -> str:
        """The question as the instructions end with it, then the turns exactly as an agent sees them."""
        return f"Question: {self.question}\n{self.first}{self.observation}{self.second}"


def episode(names: NameGenerator, rng: random.Random, families: tuple[Family, ...] = FAMILIES) -> Episode:
    """A question of a random family about fresh entities, answered by the world's oracle for two turns."""
    family = rng.choice(families)
    work_type = rng.choice(WORK_TYPES) if family.subject == "work" else ""
    entities = tuple(names.name(family.subject) for _ in range(2 if family.pick else 1))
    question = fill(rng.choice(family.phrasings), entities, work_type)
    context = Context(question, [{"role": "prompt", "text": f"Question: {question}\n", "ids": None}])
    oracle = OraclePolicy()
    first = oracle.turn(context)
    relation = family.path[0]
    found = _object(names, rng, relation, work_type)
    docs = [fact_doc(entities[0], relation, found, work_type, rng)]
    for _ in range(rng.randint(0, MAX_DISTRACTORS)):
        title = names.near(entities[0]) if rng.random() < 0.5 else names.name(family.subject)
        docs.append(fact_doc(title, relation, _object(names, rng, relation, work_type), work_type, rng))
    rng.shuffle(docs)
    observation = protocol.information(docs)
    context.segments += [
        {"role": "model", "text": first, "ids": None},
        {"role": "env", "text": observation, "ids": None},
    ]
    return Episode(question, first, observation, oracle.turn(context), found)


def _object(names: NameGenerator, rng: random.Random, relation: str, work_type: str) -> str:
    kind = RELATIONS[relation][1]
    if kind == "year":
        return str(rng.randint(*YEARS))
    return names.organisation(work_type) if relation == "published_by" else names.name(kind)


def fact_doc(title: str, relation: str, obj: str, work_type: str, rng: random.Random) -> Doc:
    """A one-fact passage in the corpus's own phrasing."""
    text = rng.choice(TEMPLATES[(relation,)]).format(s=title, **{relation: obj}, **WORK_VOCAB.get(work_type, {}))
    return {"id": "", "title": title, "text": text, "score": 0.0}


def _drills(names: NameGenerator, rng: random.Random) -> str:
    lines = []
    for _ in range(DRILLS_PER_EXAMPLE):
        name = names.name(rng.choice(KINDS))
        lines.append(f"Name: {name}. Repeat: {name}.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the probe


def copy_accuracy(model: Any, tokenizer: Any, names: NameGenerator, n: int = 100, seed: int = 0, batch: int = 32) -> float:
    """Share of ``n`` episodes in which the model, teacher-forced, copies every token of the entity the
    documents name at its first mention in the next turn (e.g. "X was founded by M" in its thought).

    ``names`` should reserve the world, and be seeded apart from the curriculum, so the names are unseen.
    """
    import torch

    rng = random.Random(f"{seed}:probe")
    rows = [_probe_row(episode(names, rng, PROBE_FAMILIES), tokenizer) for _ in range(n)]
    was_training = model.training
    model.eval()
    hits = 0
    with torch.no_grad():
        for start in range(0, n, batch):
            hits += _copied(model, rows[start : start + batch], tokenizer.pad_token_id)
    model.train(was_training)
    return hits / n


def _probe_row(ep: Episode, tokenizer: Any) -> tuple[list[int], int]:
    """The ids up to and including the copied name, and where the name's ids start.

    The name follows a space, a pre-tokenizer boundary, so encoding the two parts apart gives the same ids.
    """
    cut = ep.second.index(" " + ep.found)
    prefix = ep.text[: len(ep.text) - len(ep.second) + cut]
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    return prefix_ids + tokenizer.encode(" " + ep.found, add_special_tokens=False), len(prefix_ids)


def _copied(model: Any, rows: list[tuple[list[int], int]], pad_id: int) -> int:
    """How many rows the model predicts exactly (argmax) on every id from the row's start to its end."""
    import torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows], device=model.device)
    mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows], device=model.device)
    predicted: torch.Tensor = model(input_ids=input_ids, attention_mask=mask).logits.argmax(-1)
    return sum(
        bool((predicted[i, start - 1 : len(ids) - 1] == input_ids[i, start : len(ids)]).all())
        for i, (ids, start) in enumerate(rows)
    )
