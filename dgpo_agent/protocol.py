"""The Search-R1 protocol: the single source of truth for the graph, training and evaluation.

Prompt, action parsing, document formatting, escaping of retrieved text, answer normalisation and
scoring live here and nowhere else, so that what a model is trained on is exactly what it is served
and evaluated with.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Sequence

from dgpo_agent.state import Doc

# The version of everything below, recorded beside trained checkpoints: a model speaks the protocol it
# was trained on, so a checkpoint from another version is refused rather than prompted wrongly.
PROTOCOL_VERSION = "search-r1/1"
TAGS = ("think", "search", "information", "answer")
STOP_STRINGS = ("</search>", "</answer>")
END_OF_TURN = "<|im_end|>"  # how a ChatML template (Qwen2.5, the world tokenizer) closes a turn

INSTRUCTIONS = (
    "Answer the given question. "
    "You must conduct reasoning inside <think> and </think> first every time you get new information. "
    "After reasoning, if you find you lack some knowledge, you can call a search engine by "
    "<search> query </search> and it will return the top searched results between <information> and "
    "</information>. You can search as many times as your want. "
    "If you find no further external knowledge needed, you can directly provide the answer inside "
    "<answer> and </answer>, without detailed illustrations. For example, <answer> Beijing </answer>. "
    "Question: {question}\n"
)

CORRECTIVE_OBSERVATION = (
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
    "</search>. If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again.\n"
)


# ----------------------------------------------------------------------------------------- prompt


def question_text(question: str) -> str:
    """Search-R1 asks every question with a trailing question mark."""
    question = question.strip()
    return question if question.endswith("?") else question + "?"


def instructions(question: str) -> str:
    """The user message: the protocol instructions followed by the question, escaped like a passage, so
    a question can neither close a block, answer for the model nor smuggle in a chat special token."""
    return INSTRUCTIONS.format(question=escape(question_text(question)))


_QUESTION_RE = re.compile(r"Question:\s*(.+?)\s*$", re.DOTALL)


def read_question(text: str) -> str | None:
    """The question at the end of an instructions message (``instructions``' inverse), or None."""
    match = _QUESTION_RE.search(text)
    return match.group(1) if match else None


def render_prompt(question: str, tokenizer: Any | None = None) -> str:
    """The text the model continues: the instructions in the model's chat template when it has one.

    The assistant turn is opened once here; every later step continues that same turn.
    """
    content = instructions(question)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
        )
    return content


# ----------------------------------------------------------------------------------------- escaping

# A protocol tag, tolerant of case and inner spaces (`</ Information >`), and any chat-template token
# such as `<|im_end|>` that a tokenizer would turn into a special id.
_TAG_RE = re.compile(r"<\s*(/?)\s*(" + "|".join(TAGS) + r")\s*>", re.IGNORECASE)
_SPECIAL_RE = re.compile(r"<\|([^<>|]*)\|>")


def escape(text: str) -> str:
    """Neutralise protocol tags and special tokens inside retrieved text.

    After escaping, a passage can neither close the ``<information>`` block nor open an answer, and it
    contains no string a tokenizer maps to a special token. The text stays readable.
    """
    text = _TAG_RE.sub(lambda m: f"&lt;{m.group(1)}{m.group(2)}&gt;", text)
    return _SPECIAL_RE.sub(lambda m: f"&lt;|{m.group(1)}|&gt;", text)


def strip_tags(text: str) -> str:
    """Text for people: protocol tags and special tokens removed, so a UI never shows the raw protocol."""
    return " ".join(_SPECIAL_RE.sub(" ", _TAG_RE.sub(" ", text)).split())


# ----------------------------------------------------------------------------------------- documents


def split_contents(contents: str) -> tuple[str, str]:
    """Split a wiki-18 / Search-R1 ``contents`` field: the title is the first line."""
    title, _, text = contents.partition("\n")
    return title.strip().strip('"'), text.strip()


def format_docs(docs: Sequence[Doc]) -> str:
    """Render retrieved documents as Search-R1 does: ``Doc i(Title: …) text`` per line, escaped, and
    each on one line (line breaks inside a passage become spaces), so no passage can start a document
    of its own."""

    def line(text: str) -> str:
        return escape(" ".join(text.splitlines()))

    return "".join(f"Doc {i}(Title: {line(d['title'])}) {line(d['text'])}\n" for i, d in enumerate(docs, 1))


def information(docs: Sequence[Doc]) -> str:
    """The observation appended after a search."""
    return f"\n\n<information>{format_docs(docs)}</information>\n\n"


_INFORMATION_RE = re.compile(r"<information>(.*?)</information>", re.DOTALL)
_DOC_RE = re.compile(r"^Doc \d+\(Title: ([^)\n]*)\) (.*)$", re.MULTILINE)


def read_documents(text: str) -> list[tuple[str, str]]:
    """(title, text) of every document in every ``<information>`` block of ``text``, as ``information``
    rendered them (escaped): what a reader of the transcript, such as the scripted oracle, sees."""
    return [doc for block in _INFORMATION_RE.findall(text) for doc in _DOC_RE.findall(block)]


# ----------------------------------------------------------------------------------------- parsing

_ACTION_RE = re.compile(r"<(search|answer)>(.*?)</\1>", re.DOTALL)
_THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
_ANY_TAG_RE = re.compile(r"</?\s*(?:" + "|".join(TAGS) + r")\s*>", re.IGNORECASE)


@dataclass(frozen=True)
class Action:
    """The model's next action, parsed from one generation.

    ``kind`` is ``search`` or ``answer`` when a well-formed span was found, else ``invalid`` with a
    ``reason`` (``no_action``, ``empty_query``, ``empty_answer`` or ``nested_tags``).
    """

    kind: Literal["search", "answer", "invalid"]
    content: str = ""
    thinks: tuple[str, ...] = field(default_factory=tuple)
    reason: str = ""


def cut_at_stop(text: str) -> str:
    """The generation up to and including the first stop string (what the action is parsed from)."""
    ends = [text.find(s) + len(s) for s in STOP_STRINGS if s in text]
    return text[: min(ends)] if ends else text


def parse_action(text: str) -> Action:
    """Parse one generation. The first complete ``<search>``/``<answer>`` span decides the action.

    Never raises: anything that is not a well-formed action is ``invalid``.
    """
    text = cut_at_stop(text)
    match = _ACTION_RE.search(text)
    thinks = tuple(t.strip() for t in _THINK_RE.findall(text[: match.start()] if match else text))
    if match is None:
        return Action("invalid", thinks=thinks, reason="no_action")
    kind, content = match.group(1), match.group(2).strip()
    if _ANY_TAG_RE.search(content):
        return Action("invalid", content=content, thinks=thinks, reason="nested_tags")
    if not content:
        return Action("invalid", thinks=thinks, reason=f"empty_{'query' if kind == 'search' else 'answer'}")
    return Action(kind, content=content, thinks=thinks)  # type: ignore[arg-type]


def extract_answer(generated: str) -> str | None:
    """The last answer in text the *model* generated (never pass the prompt or observations here)."""
    answers = [a.strip() for kind, a in _ACTION_RE.findall(generated) if kind == "answer"]
    return answers[-1] if answers else None


# ----------------------------------------------------------------------------------------- scoring


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse white space."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def _golds(golds: str | Iterable[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else list(golds)


def exact_match(prediction: str | None, golds: str | Iterable[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer; a missing answer scores 0."""
    if prediction is None:
        return 0.0
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(golds)))


def f1_score(prediction: str | None, golds: str | Iterable[str]) -> float:
    """Best token-level F1 against the gold answers (SQuAD)."""
    if prediction is None:
        return 0.0
    pred_tokens = normalize_answer(prediction).split()
    best = 0.0
    for gold in _golds(golds):
        gold_tokens = normalize_answer(gold).split()
        common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
        if not pred_tokens or not gold_tokens:
            best = max(best, float(pred_tokens == gold_tokens))
        elif common:
            precision, recall = common / len(pred_tokens), common / len(gold_tokens)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def substring_hit(text: str | None, golds: str | Iterable[str]) -> float:
    """1.0 if any normalised gold answer occurs, on word boundaries, in the normalised text."""
    if not text:
        return 0.0
    padded = f" {normalize_answer(text)} "
    return float(any(normalize_answer(g) and f" {normalize_answer(g)} " in padded for g in _golds(golds)))
