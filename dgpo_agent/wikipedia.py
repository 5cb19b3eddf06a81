"""A real corpus that ships offline: gensim's English Wikipedia sample, as wiki-18 passages, with
questions about it that this project wrote.

The sample is a bz2 XML dump of about two hundred pages that gensim ships as test data (Wikipedia
text, CC BY-SA). Each article becomes passages of at most ``words`` words in wiki-18's layout
(``{"id", "contents"}``, the title in quotes on the first line), so the same code indexes it as it
would wiki-18. The dev and test questions (``assets/wikipedia/{dev,test}.jsonl``: a small dev split
to choose settings on, and the test split to report) were written by hand and each name their
article; building checks every gold answer against that article and records the passage that states
it as the question's evidence, so the evidence probes work as on the world.

The training questions are generated from the articles, in two forms a short model can learn the
search-read-answer loop on: "What is <the lead sentence's definition>?" (the answer is the article's
subject) and a sentence about the subject with its year asked for ("..., founded in what year?").
None touches a fact or a passage that a dev or test question asks about.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path
from typing import Iterator

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import normalize_answer, split_contents, substring_hit
from dgpo_agent.world.files import WorldDir, write_jsonl

SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
QUESTIONS = Path(__file__).parent / "assets" / "wikipedia"
SPLITS = ("dev", "test")  # hand-written; "train" is generated
_FUNCTION_WORDS = frozenset("what which who whom in on of at to for by is was did does do how many from".split())
MIN_WORDS = 50  # shorter pages are stubs or disambiguation leftovers
_COPULA = re.compile(r"\b(is|was|are|were) (a|an|the) ")
_YEAR = re.compile(r"\b(1[0-9]{3}|20[0-2][0-9])\b")
_YEAR_ASKED_AFTER = re.compile(r"\b(in|since|until|by|from)$")
_PRONOUNS = ("It ", "He ", "She ", "They ", "This ", "These ", "Its ", "His ", "Her ", "Their ")
MAX_QUESTION_WORDS = 30
CLOZES_PER_ARTICLE = 4


def sample_path() -> Path:
    """The dump inside gensim's test data; a clear error when gensim is not installed."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise DGPOError("the Wikipedia sample ships with gensim: pip install 'dgpo-agent[wikipedia]'") from None
    return Path(datapath(SAMPLE))


def read_articles(path: Path | None = None) -> Iterator[tuple[str, str, str]]:
    """(page id, title, plain text) of every main-namespace article of the dump; redirects and stubs
    are skipped, wiki markup (including bold and italic quote marks) removed."""
    path = path or sample_path()
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    with bz2.BZ2File(path) as dump:
        for title, markup, page_id in extract_pages(dump, filter_namespaces=("0",)):
            if markup.lower().lstrip().startswith("#redirect"):
                continue
            text = re.sub(r"'{2,}", "", re.sub(r"\n{2,}", "\n", filter_wiki(markup))).strip()
            if len(text.split()) >= MIN_WORDS:
                yield page_id, title, text


def passages(page_id: str, title: str, text: str, words: int = 100) -> list[dict]:
    """The article as wiki-18 records of at most ``words`` words each, ids ``<page id>-<n>``."""
    tokens = text.split()
    chunks = [" ".join(tokens[i : i + words]) for i in range(0, len(tokens), words)]
    return [{"id": f"{page_id}-{n}", "contents": f'"{title}"\n{chunk}'} for n, chunk in enumerate(chunks)]


def build(out_dir: str | Path, words: int = 100, questions: str | Path = QUESTIONS, articles: int | None = None) -> WorldDir:
    """Write the sample's passages, the questions (the folder ``questions`` holds a ``<split>.jsonl``
    for each of ``SPLITS``) and the generated training questions into ``out_dir``, laid out as a
    world's folder (``WorldDir``: the corpus, a file per split, the store once indexed). Each
    hand-written question gets, as ``evidence``, the id of its article's
    passage that contains a gold answer and shares the most words with the question.

    With ``articles`` only the first that many articles are kept, with the questions about them (a
    corpus that indexes in seconds, for a quick try).

    Every question is checked before anything is written: one whose article is missing, or whose
    article holds none of its answers, is refused with its id.
    """
    if words < 10:
        raise DGPOError(f"passages of {words} words are too short to hold a fact: use at least 10")
    if articles is not None and articles < 1:
        raise DGPOError(f"articles={articles}: keep at least one article")
    by_title = {title: passages(page_id, title, text, words) for page_id, title, text in read_articles()}
    kept = dict(list(by_title.items())[:articles])
    asked = {split: _read_questions(Path(questions) / f"{split}.jsonl") for split in SPLITS}
    # A question about a dropped article is left out; one about no article of the sample is refused.
    splits = {split: [_with_evidence(row, by_title) for row in rows if row["article"] in kept or row["article"] not in by_title] for split, rows in asked.items()}
    by_title = kept
    splits["train"] = train_questions(by_title, [q for split in splits.values() for q in split])
    out = WorldDir(Path(out_dir))
    out.root.mkdir(parents=True, exist_ok=True)
    write_jsonl(out.corpus, (p for article in by_title.values() for p in article))
    for split, records in splits.items():
        write_jsonl(out.questions(split), records)
    return out


def train_questions(by_title: dict[str, list[dict]], held_out: list[dict]) -> list[dict]:
    """Generated training questions, each with its answer and evidence passage: per article, the
    definition question of its lead sentence and up to ``CLOZES_PER_ARTICLE`` year questions. A
    question whose passage or (article, answer) a ``held_out`` question uses is left out, and so is
    one whose passage does not contain its answer as scoring normalises both."""
    used_passages = {p for q in held_out for p in q["evidence"]}
    used_facts = {(q["article"], normalize_answer(a)) for q in held_out for a in q["golden_answers"]}
    rows = []
    for title, article in by_title.items():
        candidates = [_definition(title, article[0]), *_year_questions(title, article)[:CLOZES_PER_ARTICLE]]
        for question, answer, passage in filter(None, candidates):
            if passage["id"] in used_passages or (title, normalize_answer(answer)) in used_facts:
                continue
            if not substring_hit(split_contents(passage["contents"])[1], [answer]):  # as EM would read it ("A" normalises to nothing)
                continue
            rows.append({
                "id": f"wiki_train_{len(rows):04d}", "question": question, "golden_answers": [answer], "article": title,
                "data_source": "wikipedia", "evidence": [passage["id"]],
            })
    return rows


def subject(title: str) -> str:
    """An article's subject as its text names it: the title without a qualifier, "Animalia (book)" → "Animalia"."""
    return re.sub(r"\s*\(.*\)$", "", title)


def _definition(title: str, lead: dict) -> tuple[str, str, dict] | None:
    """ "What is <definition>?" from "<subject> (...) is a <definition>." in the lead passage, asked
    with "Who" when the subject's name is followed by a parenthesis of dates (a person)."""
    name, body = subject(title), split_contents(lead["contents"])[1]
    start = body.find(name)
    copula = _COPULA.search(body, start) if start >= 0 else None
    if copula is None or copula.start() - start > 120:
        return None
    definition = body[copula.end() :].split(". ")[0].rstrip(".")
    if not 3 <= len(definition.split()) <= MAX_QUESTION_WORDS - 3:
        return None
    between = body[start + len(name) : copula.start()].lstrip()
    person = between.startswith("(") and bool(re.search(r"\d{3,4}", between))
    return f"{'Who' if person else 'What'} {copula.group(1)} {copula.group(2)} {definition}?", name, lead


def _year_questions(title: str, article: list[dict]) -> list[tuple[str, str, dict]]:
    """ "<sentence naming the subject>, founded in what year?" from sentences with one year, asked
    after "in", "since", "until", "by" or "from" in the sentence's second half, the subject named
    before it."""
    first_word, found = subject(title).split()[0], []
    for passage in article:
        for sentence in re.split(r"(?<=[.!?]) ", split_contents(passage["contents"])[1]):
            sentence = re.sub(r"^(=+[^=]*=+ )+", "", sentence)  # a section heading run into the sentence
            years = set(_YEAR.findall(sentence))
            if len(years) != 1 or not 8 <= len(sentence.split()) <= MAX_QUESTION_WORDS:
                continue
            if not sentence[0].isupper() or sentence.startswith(_PRONOUNS):
                continue
            (year,) = years
            before = sentence[: sentence.find(year)].rstrip()
            asks = len(before) >= len(sentence) / 2 and _YEAR_ASKED_AFTER.search(before) and first_word in before
            if asks and before.count("(") == before.count(")"):
                found.append((f"{before} what year?", year, passage))
    return found


def _with_evidence(row: dict, by_title: dict[str, list[dict]]) -> dict:
    """The question with its evidence passage, or a refusal naming it when its article does not answer it."""
    article = by_title.get(row["article"])
    if article is None:
        raise DGPOError(f"question {row['id']} names the article {row['article']!r}, which the sample does not hold: fix its 'article'")
    holding = [p for p in article if substring_hit(split_contents(p["contents"])[1], row["golden_answers"])]
    if not holding:
        raise DGPOError(f"question {row['id']}: no passage of {row['article']!r} contains {row['golden_answers']}: fix its answers")
    return {**row, "data_source": "wikipedia", "evidence": [_closest(row["question"], holding)["id"]]}


def _closest(question: str, candidates: list[dict]) -> dict:
    """The passage sharing the most words with the question (the first on a tie): an answer's name
    can recur all over its article, and the evidence probes hand over the passage that states the fact.
    The article's title and function words say nothing about which passage that is."""
    title = set(normalize_answer(split_contents(candidates[0]["contents"])[0]).split())
    words = set(normalize_answer(question).split()) - title - _FUNCTION_WORDS
    return max(candidates, key=lambda p: len(words & set(normalize_answer(split_contents(p["contents"])[1]).split())))


def _read_questions(path: Path) -> list[dict]:
    if not path.is_file():
        raise DGPOError(f"no questions at {path}: pass a JSONL file of {{id, question, golden_answers, article}}")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in rows:
        missing = [k for k in ("id", "question", "golden_answers", "article") if not row.get(k)]
        if missing:
            raise DGPOError(f"{path}: a question lacks {', '.join(missing)}: give every row id, question, golden_answers and article")
    return rows
