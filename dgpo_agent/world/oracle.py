"""A scripted expert that answers world questions by searching and reading, never by lookup.

Each turn it re-reads the whole context: it parses the question with the world's grammar, reads
every retrieved document (trusting only facts whose subject is exactly the document's title, so
near-named distractors are ignored), walks the question's path as far as the documents allow, and
then searches for the first missing fact, retries once with other words, or answers. Because the
turn is a pure function of the context, the oracle is deterministic and also answers at once when
the context already holds the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dgpo_agent.backends.base import Context
from dgpo_agent.protocol import read_documents
from dgpo_agent.scripted import UNKNOWN, ScriptedPolicy, answer, queries, search
from dgpo_agent.world.corpus import WORK_VOCAB, read_facts
from dgpo_agent.world.grammar import Parsed, parse_question

# How a known fact is said in a thought, and how a missing one is asked for.
STATEMENTS = {
    "born_in": "{s} was born in {o}",
    "birth_year": "{s} was born in {o}",
    "located_in": "{s} is in {o}",
    "founded_by": "{s} was founded by {o}",
    "founded_year": "{s} was founded in {o}",
    "headquartered_in": "{s} is headquartered in {o}",
    "created_by": "{s} was made by {o}",
    "release_year": "{s} came out in {o}",
    "published_by": "{s} was released by {o}",
}
NEEDS = {
    "born_in": "where {s} was born",
    "birth_year": "when {s} was born",
    "located_in": "which country {s} is in",
    "founded_by": "who founded {s}",
    "founded_year": "when {s} was founded",
    "headquartered_in": "where {s} is headquartered",
    "created_by": "who made {s}",
    "release_year": "when {s} came out",
    "published_by": "who released {s}",
}
# The first query for a missing fact, then the retry: the entity's name and the words its passages use.
QUERIES = {
    "born_in": ("{s} birthplace", "{s}"),
    "birth_year": ("{s} birth year", "{s} was born in the year"),
    "located_in": ("{s} country", "{s} city located in"),
    "founded_by": ("{s} founder", "{s} founded by"),
    "founded_year": ("{s} founded year", "{s} established in"),
    "headquartered_in": ("{s} headquarters", "{s} headquartered in"),
    "created_by": ("{s} {creator_noun}", "{s} {made_by}"),
    "release_year": ("{s} release year", "{s} came out"),
    "published_by": ("{s} {publisher_noun}", "{s} {publish_verb} by"),
}
# Work vocabulary for queries when the question does not tell the type of work.
GENERIC_WORK_VOCAB = {
    "creator_noun": "creator", "made_by": "made by", "publisher_noun": "publisher", "publish_verb": "released",
}
# How a comparison's deciding step is said, by which year it picks, and the ways a demonstration can show it.
COMPARED = {"min": "earlier", "max": "later"}
COMPARISON_STYLES = (None, "stated", "framed", "ordered", "placed", "keyed")
ORDINALS = ("first", "second")



@dataclass
class Memory:
    """Facts read from retrieved documents, keyed by case-folded subject, with names as written."""

    facts: dict[tuple[str, str], str] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def read(self, title: str, text: str) -> None:
        """Keep the facts a document states about its own title and nothing else."""
        for (subject, relation), obj in read_facts(text).items():
            if subject.casefold() == title.strip().casefold():
                self.facts[(subject.casefold(), relation)] = obj
                self.names[subject.casefold()] = subject

    def name(self, entity: str) -> str:
        """The entity's name as the documents write it (questions may be typed in any case)."""
        return self.names.get(entity.casefold(), entity)

    def follow(self, node: str, relation: str) -> tuple[str, str, str] | None:
        """The fact ``(subject, relation, object)`` one step from ``node``, if a document stated it."""
        obj = self.facts.get((node.casefold(), relation))
        return None if obj is None else (self.name(node), relation, obj)


@dataclass
class Progress:
    """How far a question's plan got: the facts used, what is missing, or the answer."""

    known: list[tuple[str, str, str]]
    need: tuple[str, str] | None = None  # (entity, relation)
    answer: str | None = None


class OraclePolicy(ScriptedPolicy):
    """The scripted expert as a Policy.

    ``comparison`` picks how its demonstrations show a comparison (``COMPARISON_STYLES``). None, as the
    shipped teacher learnt them: both facts, then the answer, so the choice is left to the answer's
    name. ``"stated"``: the answer first says which year decides it, the two side by side
    (``comparison_step``). ``"framed"``: every thought starts by saying which year the question wants,
    and the step gives each year its entity, so the answer's name follows the chosen year as it did
    when the year was first paired with it. ``"ordered"``: framed so too, but the step says which of the
    two facts (first or second, as the thought states them) holds the chosen year, so the answer copies
    that fact's entity instead of writing each name again inside the step. ``"placed"``: framed, and the
    step says only which fact wins ("... is the second."), so no year has to be found again among the
    two. ``"keyed"``: framed, each year fact said year first ("In 1916, B was founded."), and the step
    ends with the chosen year and what followed it there ("... is 1916, B."): the name is then copied
    forward from the year, as an induction copies what came after an earlier occurrence, instead of
    looked up behind it."""

    def __init__(self, comparison: str | None = None) -> None:
        if comparison not in COMPARISON_STYLES:
            raise ValueError(f"comparison must be one of {COMPARISON_STYLES}, not {comparison!r}")
        self.comparison = comparison

    def turn(self, context: Context) -> str:
        """The next generation for one context: a search or an answer, after a short thought."""
        parsed = parse_question(context.question)
        if parsed is None:
            return answer("I cannot tell what this question asks.", UNKNOWN)
        progress = plan(parsed, _memory(context))
        pick = parsed.family.pick if self.comparison else None
        said = [statement(fact, year_first=bool(pick) and self.comparison == "keyed") for fact in progress.known]
        if pick and self.comparison != "stated":
            said.insert(0, f"I want the {COMPARED[pick]} year.")
        if progress.answer is not None:
            if pick:
                said.append(comparison_step(pick, progress.known, self.comparison))
            return answer(" ".join([*said, f"So the answer is {progress.answer}."]), progress.answer)
        return _search(context, parsed, progress.need, " ".join(said))


def plan(parsed: Parsed, memory: Memory) -> Progress:
    """Walk the question's path (or read both years of a comparison) as far as memory allows."""
    family = parsed.family
    if family.pick:
        return _compare(parsed, memory)
    node, known = parsed.entities[0], []
    for relation in family.path:
        fact = memory.follow(node, relation)
        if fact is None:
            return Progress(known, need=(memory.name(node), relation))
        known.append(fact)
        node = fact[2]
    return Progress(known, answer=node)


def _compare(parsed: Parsed, memory: Memory) -> Progress:
    """Both entities' years, then the earlier or later one."""
    relation, known = parsed.family.path[0], []
    for entity in parsed.entities:
        fact = memory.follow(entity, relation)
        if fact is None:
            return Progress(known, need=(memory.name(entity), relation))
        known.append(fact)
    pick = min if parsed.family.pick == "min" else max
    return Progress(known, answer=pick(known, key=lambda fact: int(fact[2]))[0])


def statement(fact: tuple[str, str, str], year_first: bool = False) -> str:
    """A fact as a thought says it: "B was founded in 1916.", or year first, "In 1916, B was founded."."""
    subject, relation, obj = fact
    if year_first:
        return f"In {obj}, {STATEMENTS[relation].removesuffix(' in {o}').format(s=subject)}."
    return f"{STATEMENTS[relation].format(s=subject, o=obj)}."


def comparison_step(pick: str, known: list[tuple[str, str, str]], style: str = "stated") -> str:
    """The step that decides a comparison from both facts read, in a ``COMPARISON_STYLES`` style:
    "The earlier of 1962 and 1916 is 1916." (stated), "The earlier of 1962 (A) and 1916 (B) is 1916
    (B)." (framed), "The earlier of 1962 and 1916 is 1916, the second." (ordered), "The earlier of
    1962 and 1916 is the second." (placed) or "The earlier of 1962 and 1916 is 1916, B." (keyed)."""
    said = [f"{year} ({entity})" if style == "framed" else year for entity, _, year in known]
    index = (min if pick == "min" else max)((0, 1), key=lambda i: int(known[i][2]))
    chosen = {
        "ordered": f"{said[index]}, the {ORDINALS[index]}", "placed": f"the {ORDINALS[index]}", "keyed": f"{said[index]}, {known[index][0]}",
    }.get(style, said[index])
    return f"The {COMPARED[pick]} of {said[0]} and {said[1]} is {chosen}."


def _memory(context: Context) -> Memory:
    """Everything the environment's documents said so far (documents can also come with the prompt)."""
    memory = Memory()
    for segment in context.segments:
        if segment["role"] != "model":
            for title, text in read_documents(segment["text"]):
                memory.read(title, text)
    return memory


def _search(context: Context, parsed: Parsed, need: tuple[str, str], known: str) -> str:
    """Search for the missing fact, retry once with other words, then give up."""
    entity, relation = need
    wanted = NEEDS[relation].format(s=entity)
    vocab = WORK_VOCAB.get(parsed.work_type, GENERIC_WORK_VOCAB)
    candidates = [template.format(s=entity, **vocab) for template in QUERIES[relation]]
    issued = {q.casefold() for q in queries(context)}
    fresh = [q for q in candidates if q.casefold() not in issued]
    if not fresh:
        return answer(f"{known} I could not find {wanted}.", UNKNOWN)
    if fresh[0] == candidates[0]:
        thought = f"I need to find {wanted}."
    else:
        thought = f"The results do not say {wanted}; I will search with other words."
    return search(f"{known} {thought}", fresh[0])
