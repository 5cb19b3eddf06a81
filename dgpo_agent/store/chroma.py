"""A Chroma collection as the agent's search engine: local directory or ``chroma run`` server.

Chroma never embeds anything here: collections are opened with ``embedding_function=None`` and every add and
query passes vectors from our :class:`Embedder`. Chroma's default embedding function would try to download
an ONNX model, and a second embedding model would silently put the index in another space.
"""

from __future__ import annotations

import json
import os
import shutil
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import chromadb
from chromadb.config import Settings
from chromadb.errors import NotFoundError
from rich.progress import MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from dgpo_agent.errors import DGPOError
from dgpo_agent.state import Doc
from dgpo_agent.store import is_url
from dgpo_agent.store.corpus import read_corpus
from dgpo_agent.store.embeddings import Embedder, check_device

EMBEDDER_KEY = "dgpo_embedder"  # collection metadata: the JSON of Embedder.describe()
# The HNSW settings a store may be built with. ef_construction and max_neighbors shape the graph when
# it is built; ef_search, the candidates kept per query, can change on an existing store. Chroma's
# defaults miss a few of the exact nearest neighbours; larger values miss fewer, at some query time
# (bench/README.md).
CHROMA_FILE = "chroma.sqlite3"  # what a local Chroma store holds: a folder without it is no store
CONTENT_KEY = "sha256"  # passage metadata: the hash of the title and text it was embedded from
HNSW_BUILD = ("ef_construction", "max_neighbors")
HNSW_KEYS = (*HNSW_BUILD, "ef_search")


def _settings() -> Settings:
    """Fresh settings per client: chromadb's HttpClient writes the server's address into the Settings it
    is given, so one shared object would send every later local store to that server."""
    return Settings(anonymized_telemetry=False)


def _index_hint(location: str) -> str:
    return f"run `dgpo-agent index CORPUS --store {location}`"


def _connect(location: str, must_exist: bool) -> Any:
    """A client for a server URL or a local directory (created unless ``must_exist``)."""
    if is_url(location):
        url = urlsplit(location)
        try:
            return chromadb.HttpClient(
                host=url.hostname or "localhost",
                port=url.port or (443 if url.scheme == "https" else 8000),
                ssl=url.scheme == "https",
                settings=_settings(),
            )
        except ValueError as exc:
            raise DGPOError(
                f"cannot reach the Chroma server at {location}: start it with `chroma run --path DIR --port N` "
                "or fix the URL"
            ) from exc
    path = Path(location).expanduser()
    if must_exist and not (path / CHROMA_FILE).is_file():
        raise DGPOError(f"no store at {location}: {_index_hint(location)}")
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=_settings())


def _batched(items: Iterable[dict], size: int) -> Iterator[list[dict]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def _unique(batch: list[dict]) -> list[dict]:
    """The first record for each id: Chroma rejects a batch that repeats an id."""
    first: dict[str, dict] = {}
    for record in batch:
        first.setdefault(record["id"], record)
    return list(first.values())


def content_hashes(records: Iterable[dict]) -> tuple[dict[str, str], int]:
    """Each id's content hash, and how many records repeat an earlier one exactly; refuses ids that come
    with two different texts."""
    import hashlib

    hashes: dict[str, str] = {}
    conflicts: list[str] = []
    duplicates = 0
    for record in records:
        digest = hashlib.sha256(f"{record['title']}\n{record['text']}".encode()).hexdigest()
        if record["id"] in hashes:
            duplicates += 1
            if hashes[record["id"]] != digest:
                conflicts.append(record["id"])
        hashes.setdefault(record["id"], digest)
    if conflicts:
        shown = ", ".join(repr(i) for i in dict.fromkeys(conflicts[:5]))
        raise DGPOError(f"the corpus gives {len(set(conflicts))} id(s) two different texts ({shown}): give every passage its own id")
    return hashes, duplicates


def passage_text(record: dict) -> str:
    """What is embedded for a passage: title and text, as wiki-18 ``contents`` (Search-R1's indexes do this)."""
    return f"{record['title']}\n{record['text']}" if record["title"] else record["text"]


def _progress(enabled: bool) -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("indexing"),
        MofNCompleteColumn(),
        TextColumn("read, {task.fields[added]} new"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


class ChromaStore:
    """A searchable passage store in one Chroma collection.

    ``location`` is a local directory or an ``http(s)://host:port`` URL of a ``chroma run`` server. The
    embedder is recorded in the collection when it is created; reopening without one rebuilds it from that
    record (on ``device``), and an explicit embedder that disagrees with it is refused. ``hnsw`` (keys of ``HNSW_KEYS``;
    None leaves Chroma's default) sets the cosine index's parameters when the collection is created; on an existing one ``ef_search`` is
    changed, and build parameters that disagree with the collection's are refused. A changed ``ef_search``
    is recorded at once but searches with it only where the index is loaded after the change (a new
    process, or this one if it has not yet searched or written the store): Chroma keeps the width an
    index was loaded with.
    """

    def __init__(
        self,
        location: str | Path,
        collection: str = "dgpo",
        embedder: Embedder | None = None,
        must_exist: bool = False,
        hnsw: Mapping[str, int] | None = None,
        device: str = "cpu",
    ) -> None:
        self.location = str(location)
        self.device = device
        self.name = collection
        self.last_ingest: dict[str, int] | None = None  # what the last ``index_corpus`` did to the store
        hnsw = _check_hnsw(hnsw or {})
        self._client = _connect(self.location, must_exist)
        try:
            self._collection = self._get() if must_exist else self._get_or_create(embedder or Embedder(device=device), hnsw)
            self.embedder = self._recorded_embedder(embedder)
            self._apply_hnsw(hnsw)
        except BaseException:  # a refused store is let go of at once, so its folder can be moved or rebuilt
            self._client.close()
            raise

    def __repr__(self) -> str:
        return f"ChromaStore({self.location!r}, collection={self.name!r}, embedder={self.embedder!r})"

    def close(self) -> None:
        """Release this store's client: once every client of a local store is closed, Chroma lets go
        of its files, and a store opened at the same path later reads what is there then."""
        self._client.close()

    def _get(self) -> Any:
        try:
            return self._client.get_collection(self.name, embedding_function=None)
        except NotFoundError as exc:
            raise DGPOError(
                f"no collection {self.name!r} in the store at {self.location}: {_index_hint(self.location)}"
            ) from exc

    def _get_or_create(self, embedder: Embedder, hnsw: Mapping[str, int]) -> Any:
        """Open the collection, creating it (cosine HNSW, embedder recorded) if it does not exist."""
        return self._client.get_or_create_collection(
            self.name,
            configuration={"hnsw": {"space": "cosine", **hnsw}},
            metadata={EMBEDDER_KEY: json.dumps(embedder.describe(), sort_keys=True)},
            embedding_function=None,
        )

    def _recorded_embedder(self, given: Embedder | None) -> Embedder:
        """The embedder the collection was built with; refuses one from another embedding space."""
        recorded = (self._collection.metadata or {}).get(EMBEDDER_KEY)
        if recorded is None:
            if given is None:
                raise DGPOError(
                    f"collection {self.name!r} at {self.location} records no embedder: pass the embedder "
                    "it was built with (Embedder(MODEL, ...))"
                )
            return given
        description = json.loads(recorded)
        if given is None:
            return Embedder(**description, device=self.device)
        if given.describe() != description:
            raise DGPOError(
                f"collection {self.name!r} at {self.location} was built with {description}, not "
                f"{given.describe()}: use the recorded embedder (pass none) or index into a new store"
            )
        return given

    def hnsw(self) -> dict[str, int]:
        """The collection's HNSW parameters (``HNSW_KEYS``)."""
        current = (self._collection.configuration or {}).get("hnsw") or {}
        return {k: current[k] for k in HNSW_KEYS if k in current}

    def _apply_hnsw(self, hnsw: Mapping[str, int]) -> None:
        """Refuse build parameters the collection was not built with; set ``ef_search`` if it differs."""
        current = self.hnsw()
        built = _build_changes(hnsw, current)
        if built:
            asked = ", ".join(f"{k}={hnsw[k]}" for k in built)
            has = ", ".join(f"{k}={v}" for k, v in built.items())
            raise DGPOError(
                f"the store at {self.location} was built with {has}, not {asked}: these fix the index when it "
                "is built, so index into a new store (or delete this one) to change them"
            )
        if "ef_search" in hnsw and hnsw["ef_search"] != current.get("ef_search"):
            self._collection.modify(configuration={"hnsw": {"ef_search": hnsw["ef_search"]}})

    # ------------------------------------------------------------------------------------- writing

    def ingest(
        self, records: Iterable[dict], batch_size: int = 256, progress: bool = True, hashes: tuple[dict[str, str], int] | None = None
    ) -> dict[str, int]:
        """Make the store hold exactly ``records``: add the passages it lacks, re-embed those whose title
        or text changed, and remove those the records no longer have. Returns the counts (``added``,
        ``updated``, ``removed``, ``duplicates``: records repeating an earlier one exactly, skipped).

        Safe to re-run after an interruption: each batch first reads what the store holds for its ids
        and embeds only what is missing or changed. Records repeating an id with another text are
        refused, naming the ids, before the store is touched. ``hashes`` (what ``content_hashes`` says of
        the same records) lets a caller stream the records in a second pass instead of holding them.
        """
        if hashes is None:
            records = list(records)
            hashes = content_hashes(records)
        hashes, duplicates = hashes
        batch_size = min(batch_size, self._client.get_max_batch_size())
        counts = {"added": 0, "updated": 0, "removed": 0, "duplicates": duplicates}
        with _progress(progress) as bar:
            task = bar.add_task("indexing", total=len(hashes) + duplicates, added=0)
            for batch in _batched(records, batch_size):
                added, updated = self._sync(_unique(batch), hashes)
                counts["added"] += added
                counts["updated"] += updated
                bar.update(task, advance=len(batch), added=counts["added"] + counts["updated"])
        counts["removed"] = self._remove_absent(hashes)
        return counts

    def _sync(self, batch: list[dict], hashes: Mapping[str, str]) -> tuple[int, int]:
        """Add this batch's new passages and re-embed its changed ones; (added, updated)."""
        held = self._collection.get(ids=[r["id"] for r in batch], include=["documents", "metadatas"])
        stored = {i: (d, m or {}) for i, d, m in zip(held["ids"], held["documents"], held["metadatas"])}

        def same(record: dict) -> bool:
            text, metadata = stored[record["id"]]
            return metadata.get(CONTENT_KEY, hashes[record["id"]]) == hashes[record["id"]] and text == record["text"] and metadata.get("title") == record["title"]

        new = [r for r in batch if r["id"] not in stored]
        changed = [r for r in batch if r["id"] in stored and not same(r)]
        for method, rows in ((self._collection.add, new), (self._collection.upsert, changed)):
            if rows:
                method(
                    ids=[r["id"] for r in rows],
                    embeddings=self.embedder.embed_passages([passage_text(r) for r in rows]),
                    documents=[r["text"] for r in rows],
                    metadatas=[{"title": r["title"], CONTENT_KEY: hashes[r["id"]]} for r in rows],
                )
        return len(new), len(changed)

    def _remove_absent(self, keep: Mapping[str, str], page: int = 5000) -> int:
        """Delete the passages whose ids ``keep`` lacks; how many were deleted."""
        held: list[str] = []
        for offset in range(0, self._collection.count(), page):
            held += self._collection.get(include=[], limit=page, offset=offset)["ids"]
        gone = [i for i in held if i not in keep]
        for start in range(0, len(gone), page):
            self._collection.delete(ids=gone[start : start + page])
        return len(gone)

    # ------------------------------------------------------------------------------------- reading

    def count(self) -> int:
        """Number of passages in the store."""
        return self._collection.count()

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Doc]]:
        """The top-``k`` passages for each query, best first, scored by cosine similarity (1 - distance).

        All queries go through one embedding call and one Chroma query. Scores are rounded to
        ``SCORE_DIGITS`` decimals: embedding a query alone or in a batch differs by float noise
        (~1e-7), which would otherwise make identical trajectories compare unequal.
        """
        if not queries:
            return []
        result = self._collection.query(
            query_embeddings=self.embedder.embed_queries(list(queries)),
            n_results=k,
            include=["documents", "metadatas", "distances"],
        )
        if not any(result["ids"]):
            raise DGPOError(f"store {self.location} is empty: {_index_hint(self.location)}")
        rows = zip(result["ids"], result["documents"], result["metadatas"], result["distances"])
        return [[_doc(i, d, m, round(1.0 - dist, SCORE_DIGITS)) for i, d, m, dist in zip(*row)] for row in rows]

    def get(self, ids: Sequence[str]) -> list[Doc]:
        """The passages with these ids, in the given order (score 0.0: they were not retrieved)."""
        found = self._collection.get(ids=list(ids), include=["documents", "metadatas"])
        by_id = {i: _doc(i, d, m, 0.0) for i, d, m in zip(found["ids"], found["documents"], found["metadatas"])}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DGPOError(
                f"{len(missing)} id(s) not in the store at {self.location} (e.g. {missing[:3]}): index the "
                "corpus these ids come from"
            )
        return [by_id[i] for i in ids]

    def as_langchain_retriever(self, k: int = 3) -> Any:
        """This store as a LangChain ``BaseRetriever`` returning ``k`` documents per query."""
        from dgpo_agent.store.langchain import StoreRetriever

        return StoreRetriever(store=self, k=k)


SCORE_DIGITS = 4


def _doc(id: str, text: str | None, metadata: dict | None, score: float) -> Doc:
    return Doc(id=id, title=str((metadata or {}).get("title", "")), text=text or "", score=score)


def _check_hnsw(hnsw: Mapping[str, Any]) -> dict[str, int]:
    """The HNSW settings that are set (None: Chroma's default), each a known key with a positive integer."""
    unknown = sorted(set(hnsw) - set(HNSW_KEYS))
    if unknown:
        raise DGPOError(f"unknown HNSW setting(s) {', '.join(unknown)}: the valid ones are {', '.join(HNSW_KEYS)}")
    hnsw = {k: v for k, v in hnsw.items() if v is not None}
    for key, value in hnsw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DGPOError(f"HNSW {key} must be a positive integer, not {value!r}")
    return hnsw


def index_corpus(
    corpus_path: str | Path,
    location: str | Path,
    collection: str = "dgpo",
    embedder: Embedder | None = None,
    batch_size: int = 256,
    progress: bool = True,
    hnsw: Mapping[str, int] | None = None,
    device: str = "cpu",
    rebuild: bool = False,
) -> ChromaStore:
    """Index a JSONL corpus into a store (or bring an existing store in line with it: see ``ingest``) and
    return the store, with the counts of the last ingest as ``store.last_ingest``. The corpus is read and
    checked before the store is opened, and a store this call created is removed if indexing fails.
    ``device`` embeds with the recorded (or default) model there when no ``embedder`` is given.

    A local store built with other HNSW build parameters (``HNSW_BUILD``) is refused, or with
    ``rebuild`` built again beside it and put in its place once complete (a pipeline's own store; no
    other client of this process may hold it open, or that client would still read the old one)."""
    check_device(device)
    if batch_size < 1:
        raise DGPOError(f"batch_size must be at least 1 (got {batch_size})")
    hashes = content_hashes(read_corpus(corpus_path))  # every record read and checked before the store is opened
    if not hashes[0]:
        raise DGPOError(f"corpus {corpus_path} holds no passages: pass a JSONL file with at least one record")
    folder = None if is_url(location) else Path(location).expanduser()
    if folder is not None and folder.is_dir() and any(folder.iterdir()) and not (folder / CHROMA_FILE).is_file():
        raise DGPOError(f"{location} is a folder that holds no Chroma store: pass a new or empty folder for the store")
    if rebuild and folder is not None and _built_otherwise(folder, collection, _check_hnsw(hnsw or {})):
        _replace_store(folder, lambda staged: index_corpus(corpus_path, staged, collection, embedder, batch_size, progress, hnsw, device))
    created = folder is not None and not folder.exists()
    try:
        store = ChromaStore(location, collection, embedder, hnsw=hnsw, device=device)
        store.last_ingest = store.ingest(read_corpus(corpus_path), batch_size=batch_size, progress=progress, hashes=hashes)
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return store


def _built_otherwise(folder: Path, collection: str, hnsw: Mapping[str, int]) -> bool:
    """Whether the store in ``folder`` holds ``collection`` built with other build parameters than ``hnsw``
    sets (its client closed again, so the folder can be replaced)."""
    if not (folder / CHROMA_FILE).is_file():
        return False
    try:
        store = ChromaStore(folder, collection, must_exist=True)
    except DGPOError:  # no such collection yet: it is built as asked
        return False
    try:
        built = store.hnsw()
    finally:
        store.close()
    return bool(_build_changes(hnsw, built))


def _build_changes(asked: Mapping[str, int], built: Mapping[str, int]) -> dict[str, int | None]:
    """The build parameters (``HNSW_BUILD``) that ``asked`` sets to other values than the store was
    ``built`` with: {name: the built value}."""
    return {k: built.get(k) for k in HNSW_BUILD if k in asked and asked[k] != built.get(k)}


def _replace_store(folder: Path, build: Callable[[Path], ChromaStore]) -> None:
    """Build a store beside ``folder`` and swap it in once it is complete: an interrupted build leaves
    the old store where it was."""
    staged, replaced = folder.with_name(folder.name + ".rebuild"), folder.with_name(folder.name + ".replaced")
    for leftover in (staged, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    build(staged).close()
    os.replace(folder, replaced)
    os.replace(staged, folder)
    shutil.rmtree(replaced)
