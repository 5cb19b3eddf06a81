"""Bridges to LangChain in both directions.

:class:`LangChainRetrieverAdapter` lets the agent search with any LangChain retriever; :class:`StoreRetriever`
lets LangChain applications use one of our stores.
"""

from __future__ import annotations

from typing import Any, Sequence

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever

from dgpo_agent.protocol import split_contents
from dgpo_agent.state import Doc
from dgpo_agent.store.corpus import stable_id


def to_doc(document: Document) -> Doc:
    """A LangChain document as a :class:`Doc`.

    The title is ``metadata["title"]`` or else the first line of a multi-line ``page_content`` (the wiki-18
    layout); single-line content is all text. Ids fall back to a hash of the content so they stay stable.
    """
    metadata = document.metadata or {}
    if "title" in metadata:
        title, text = str(metadata["title"]), document.page_content
    elif "\n" in document.page_content.strip():
        title, text = split_contents(document.page_content)
    else:
        title, text = "", document.page_content.strip()
    doc_id = document.id or metadata.get("id") or stable_id(title, text)
    return Doc(id=str(doc_id), title=title, text=text, score=float(metadata.get("score", 0.0)))


class LangChainRetrieverAdapter:
    """Any LangChain ``BaseRetriever`` behind our ``search(queries, k)`` interface.

    All queries go through one ``retriever.batch`` call. LangChain retrievers choose how many documents they
    return (e.g. ``search_kwargs={"k": ...}``): ``k`` only truncates, so configure the retriever for at least k.
    """

    def __init__(self, retriever: BaseRetriever) -> None:
        self.retriever = retriever

    def __repr__(self) -> str:
        return f"LangChainRetrieverAdapter({self.retriever!r})"

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Doc]]:
        if not queries:
            return []
        return [[to_doc(d) for d in docs[:k]] for docs in self.retriever.batch(list(queries))]


class StoreRetriever(BaseRetriever):
    """One of our stores (anything with ``search``) as a LangChain retriever returning ``k`` documents."""

    store: Any
    k: int = 3

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=d["text"], metadata={k: d[k] for k in ("id", "title", "score")}, id=d["id"])
            for d in self.store.search([query], self.k)[0]
        ]
