"""Passage stores the agent searches: Chroma (local or server), any LangChain retriever, or your own.

Anything with ``search(queries, k) -> list[list[Doc]]`` is a :class:`Retriever`. Importing this package is
cheap: chromadb, LangChain and sentence-transformers load only when a store, adapter or model is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

from dgpo_agent.errors import DGPOError
from dgpo_agent.state import Doc
from dgpo_agent.store.corpus import read_corpus
from dgpo_agent.store.embeddings import Embedder

if TYPE_CHECKING:
    from dgpo_agent.store.chroma import ChromaStore, index_corpus
    from dgpo_agent.store.langchain import LangChainRetrieverAdapter

__all__ = [
    "ChromaStore",
    "Embedder",
    "LangChainRetrieverAdapter",
    "Retriever",
    "index_corpus",
    "is_url",
    "open_retriever",
    "read_corpus",
]

# Public names whose modules import heavy libraries, loaded on first access.
_LAZY = {
    "ChromaStore": "dgpo_agent.store.chroma",
    "index_corpus": "dgpo_agent.store.chroma",
    "LangChainRetrieverAdapter": "dgpo_agent.store.langchain",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_url(location: str | Path) -> bool:
    """Whether a store location names a Chroma server rather than a local directory."""
    return str(location).startswith(("http://", "https://"))


@runtime_checkable
class Retriever(Protocol):
    """What the agent searches with: the top-``k`` passages for each query, in one call for all queries."""

    def search(self, queries: Sequence[str], k: int) -> list[list[Doc]]: ...


def open_retriever(spec: Any, collection: str = "dgpo", device: str = "cpu") -> Retriever:
    """A retriever from a store path or URL, a LangChain retriever, or anything that already has ``search``.

    A path must hold an indexed store: a typo should fail here, not create an empty store. Its queries
    are embedded on ``device``.
    """
    if isinstance(spec, (str, Path)):
        from dgpo_agent.store.chroma import ChromaStore

        return ChromaStore(spec, collection, must_exist=True, device=device)
    from langchain_core.retrievers import BaseRetriever

    if isinstance(spec, BaseRetriever):
        from dgpo_agent.store.langchain import LangChainRetrieverAdapter

        return LangChainRetrieverAdapter(spec)
    if callable(getattr(spec, "search", None)):
        return spec
    raise DGPOError(
        f"cannot search with a {type(spec).__name__}: pass a store path or URL, a ChromaStore, a LangChain "
        "BaseRetriever, or an object with search(queries, k)"
    )
