"""A real corpus that ships offline: gensim's English Wikipedia sample, as wiki-18 passages, with
questions about it that this project wrote.

The sample is a bz2 XML dump of about two hundred pages that gensim ships as test data (Wikipedia
text, CC BY-SA). Each article becomes passages of at most ``words`` words in wiki-18's layout
(``{"id", "contents"}``, the title in quotes on the first line), so the same code indexes it as it
would wiki-18. The questions (``assets/wikipedia/{dev,test}.jsonl``: a small dev split to choose
settings on, and the test split to report) each name their article; building checks every gold
answer against that article and records the passage that states it as the question's evidence, so
the evidence probes work as on the world.
"""

from __future__ import annotations

import bz2
import json
import re
from pathlib import Path
from typing import Iterator

from dgpo_agent.errors import DGPOError
from dgpo_agent.protocol import normalize_answer, split_contents, substring_hit
from dgpo_agent.world.files import WorldDir

SAMPLE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
QUESTIONS = Path(__file__).parent / "assets" / "wikipedia"
SPLITS = ("dev", "test")
_FUNCTION_WORDS = frozenset("what which who whom in on of at to for by is was did does do how many from".split())
MIN_WORDS = 50  # shorter pages are stubs or disambiguation leftovers


def sample_path() -> Path:
    """The dump inside gensim's test data; a clear error when gensim is not installed."""
    try:
        from gensim.test.utils import datapath
    except ImportError:
        raise DGPOError("the Wikipedia sample ships with gensim: pip install 'dgpo-agent[wikipedia]'") from None
    return Path(datapath(SAMPLE))


def articles(path: Path | None = None) -> Iterator[tuple[str, str, str]]:
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


def build(out_dir: str | Path, words: int = 100, questions: str | Path = QUESTIONS) -> WorldDir:
    """Write the sample's passages and the questions (the folder ``questions`` holds a
    ``<split>.jsonl`` for each of ``SPLITS``) into ``out_dir``, laid out as a world's folder (``WorldDir``: the corpus, a file per
    split, the store once indexed). Each question gets, as ``evidence``, the id of its article's
    passage that contains a gold answer and shares the most words with the question.

    Every question is checked before anything is written: one whose article is missing, or whose
    article holds none of its answers, is refused with its id.
    """
    if words < 10:
        raise DGPOError(f"passages of {words} words are too short to hold a fact: use at least 10")
    by_title = {title: passages(page_id, title, text, words) for page_id, title, text in articles()}
    splits = {split: [_with_evidence(row, by_title) for row in _read_questions(Path(questions) / f"{split}.jsonl")] for split in SPLITS}
    out = WorldDir(Path(out_dir))
    out.root.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out.corpus, (p for article in by_title.values() for p in article))
    for split, records in splits.items():
        _write_jsonl(out.questions(split), records)
    return out


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


def _write_jsonl(path: Path, rows) -> None:
    """Write beside the target and rename, so a failed build never leaves half a file."""
    partial = path.with_suffix(".partial")
    with partial.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    partial.replace(path)
