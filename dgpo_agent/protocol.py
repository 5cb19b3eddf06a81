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

from dgpo_agent.errors import DGPOError
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

# Search-R1's correction, with its tags shown empty: the reference wrote "between <search> and
# </search>", which a model that copies it turns into a search for "and". An empty span never parses.
CORRECTIVE_OBSERVATION = (
    "\nMy previous action is invalid. If I want to search, I should put the query inside <search></search>. "
    "If I want to give the final answer, I should put the answer inside <answer></answer>. Let me try again.\n"
)

# The correction as a user turn says it to the model rather than in the model's voice.
CORRECTION_TO_MODEL = (
    "Your reply has no valid action. To search, put the query inside <search></search>. "
    "To give the final answer, put the answer inside <answer></answer>."
)

OBSERVATIONS: tuple[str, ...] = ("inline", "user")


@dataclass(frozen=True)
class Example:
    """A worked example of the protocol: a search, the documents it returned (as many as a search
    returns by default, the first stating the answer), and the answer."""

    question: str
    search_thought: str
    query: str
    documents: tuple[tuple[str, str], ...]  # (title, text)
    answer_thought: str
    answer: str


# Facts from outside any shipped corpus, so an example never hands the model a test answer.
EXAMPLES = (
    Example(
        "Who wrote the novel Moby-Dick?", "I need to find who wrote Moby-Dick.", "Moby-Dick author",
        (
            ("Moby-Dick", "Moby-Dick is an 1851 novel by American writer Herman Melville."),
            ("Whaling", "Whaling is the hunting of whales for their meat and blubber, which can be turned into oil."),
            ("Nantucket", "Nantucket is an island off Cape Cod, once the centre of the American whaling industry."),
        ),
        "Doc 1 says Herman Melville wrote it.", "Herman Melville",
    ),
    Example(
        "In what year did the Eiffel Tower open?", "I need to find when the Eiffel Tower opened.", "Eiffel Tower opening year",
        (
            ("Eiffel Tower", "The Eiffel Tower is a wrought-iron lattice tower in Paris. It opened in 1889 for the World's Fair."),
            ("Gustave Eiffel", "Gustave Eiffel was a French civil engineer whose company designed and built the tower."),
            ("Paris", "Paris is the capital and most populous city of France."),
        ),
        "Doc 1 says it opened in 1889.", "1889",
    ),
)


def check_observations(observations: str) -> None:
    if observations not in OBSERVATIONS:
        raise DGPOError(f"unknown observations {observations!r}: use one of {', '.join(OBSERVATIONS)}")


@dataclass(frozen=True)
class ChatFormat:
    """How the protocol is laid out in the model's chat.

    ``observations``: where the environment's text (documents, corrections) goes. ``inline`` keeps it
    inside the one assistant turn, as Search-R1 trains and serves its models: the default, and what
    every model this project trains speaks. ``user`` puts it in a new user turn of the chat template,
    the assistant turn closed first, as a chat model expects. ``examples``: how many worked examples
    (``EXAMPLES``) precede the question as earlier turns of the chat, laid out the same way. A chat
    model that was only prompted needs both to search and answer (docs/serving.md, measured).
    """

    observations: str = "inline"
    examples: int = 0

    def __post_init__(self) -> None:
        check_observations(self.observations)
        if not 0 <= self.examples <= len(EXAMPLES):
            raise DGPOError(f"examples must be between 0 and {len(EXAMPLES)} (got {self.examples})")


def correction(fmt: ChatFormat) -> str:
    """What the environment says after an invalid action (never itself a parsable action)."""
    return CORRECTION_TO_MODEL if fmt.observations == "user" else CORRECTIVE_OBSERVATION


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


def render_prompt(question: str, tokenizer: Any | None = None, fmt: ChatFormat = ChatFormat()) -> str:
    """The text the model continues: the instructions in the model's chat template when it has one,
    after ``fmt.examples`` worked examples.

    The assistant turn is opened once here; every later step continues it (``inline``) or follows a new
    user turn (``user``).
    """
    messages = [m for example in EXAMPLES[: fmt.examples] for m in _example_messages(example, fmt)]
    messages.append({"role": "user", "content": instructions(question)})
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "".join(m["content"] for m in messages)


def _example_messages(example: Example, fmt: ChatFormat) -> list[dict[str, str]]:
    """One worked example as chat messages: the documents in a user turn, or inside the model's turn."""
    search = f"<think> {example.search_thought} </think>\n<search> {example.query} </search>"
    found = information([{"id": "", "title": title, "text": text, "score": 0.0} for title, text in example.documents])
    answer = f"<think> {example.answer_thought} </think>\n<answer> {example.answer} </answer>"
    if fmt.observations == "user":
        turns = [("assistant", search), ("user", found.strip()), ("assistant", answer)]
    else:
        turns = [("assistant", search + found + answer)]
    return [{"role": "user", "content": instructions(example.question)}] + [{"role": r, "content": c} for r, c in turns]


_MARK = "\x00assistant\x00"  # stands in for the model's turn while the template renders what follows


def render_observation(text: str, fmt: ChatFormat, tokenizer: Any | None = None, closed_by: str | None = None) -> str:
    """The text appended after a model turn for the environment's ``text``.

    ``inline`` observations are ``text`` itself. ``user`` renders it as a user message in ``tokenizer``'s chat
    template, with everything the template puts between an assistant message and the next assistant
    turn: the end of the model's turn, the user turn, and the opening of a new assistant turn. When the
    model already ended its turn with the special token ``closed_by``, that token is not repeated. A
    tokenizer without a chat template has no turns to open: the text stays inline.
    """
    if fmt.observations == "inline" or tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return text
    messages = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _MARK}, {"role": "user", "content": text.strip()}]
    rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    tail = rendered[rendered.index(_MARK) + len(_MARK) :]
    return tail[len(closed_by) :] if closed_by and tail.startswith(closed_by) else tail


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
