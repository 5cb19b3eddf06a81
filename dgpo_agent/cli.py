"""The ``dgpo-agent`` command line.

Every command imports what it needs inside its own body, so ``dgpo-agent --help`` answers at once.
User errors (``DGPOError``) print as one line, with no traceback, and exit with status 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    help="Train and deploy compact agentic-RAG models with DGPO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_WORLD = Path("dgpo-world")


def _store_for(world: Path) -> Path:
    return world / "chroma"


@app.command()
def world(
    seed: int = typer.Option(0, help="Random seed: the same seed writes byte-identical files."),
    out: Path = typer.Option(DEFAULT_WORLD, help="Directory to write the world into."),
    size: str = typer.Option("default", help="'default' (the tiny-model world) or 'small' (for tests)."),
) -> None:
    """Generate the embedded synthetic world: knowledge base, passages and train/dev/test questions."""
    from dgpo_agent.world import generate_world
    from dgpo_agent.world.kb import WorldConfig

    summary = generate_world(out, WorldConfig.preset(size, seed=seed))
    _print_summary(f"world written to {out}", summary)


@app.command()
def index(
    corpus: Path = typer.Argument(..., help="JSONL corpus: {id, contents} (wiki-18) or {id, title, text}."),
    store: str = typer.Option(str(_store_for(DEFAULT_WORLD)), help="Chroma directory, or http://host:port of `chroma run`."),
    collection: str = typer.Option("dgpo", help="Chroma collection name."),
    embedder: Optional[str] = typer.Option(None, help="sentence-transformers model name or path (default: packaged all-MiniLM-L6-v2)."),
    query_prefix: str = typer.Option("", help="Prefix for queries, e.g. 'query: ' for e5 models."),
    passage_prefix: str = typer.Option("", help="Prefix for passages, e.g. 'passage: ' for e5 models."),
    batch_size: int = typer.Option(256, help="Passages embedded and added per batch."),
) -> None:
    """Index a corpus into a Chroma store. Re-running adds only what is missing (safe to resume)."""
    from dgpo_agent.store import Embedder, index_corpus

    emb = Embedder(embedder, query_prefix=query_prefix, passage_prefix=passage_prefix) if embedder or query_prefix or passage_prefix else None
    result = index_corpus(corpus, store, collection=collection, embedder=emb, batch_size=batch_size)
    typer.echo(f"store {store} (collection {collection}) holds {result.count()} passages")


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question to answer."),
    model: Optional[str] = typer.Option(None, help="Checkpoint directory, Hugging Face name, or server URL."),
    policy: Optional[str] = typer.Option(None, help="'oracle' runs the world's scripted expert (no model needed)."),
    store: str = typer.Option(str(_store_for(DEFAULT_WORLD)), help="Chroma directory or URL."),
    max_turns: int = typer.Option(4, help="Rounds in which a search is executed."),
    top_k: int = typer.Option(3, help="Documents per search."),
    temperature: float = typer.Option(0.0, help="0 decodes greedily."),
    max_new_tokens: int = typer.Option(256, help="Token budget of one turn."),
) -> None:
    """Answer a question, printing each think, search (with its documents) and the answer."""
    from dgpo_agent.agent import CompactSearchAgent
    from dgpo_agent.rollout import check_question
    from dgpo_agent.errors import DGPOError

    check_question(question)
    if (model is None) == (policy is None):
        raise DGPOError("pass exactly one of --model PATH|NAME|URL or --policy oracle")
    if policy not in (None, "oracle"):
        raise DGPOError(f"unknown policy {policy!r}: the only scripted policy is 'oracle'")
    agent = CompactSearchAgent(
        model or policy, store, max_turns=max_turns, top_k=top_k, temperature=temperature, max_new_tokens=max_new_tokens
    )
    from dgpo_agent.display import print_step

    for step in agent.stream(question):
        print_step(step)


@app.command()
def train(
    preset: str = typer.Option("tiny", help="Settings preset: tiny (default, CPU) or smoke (a few minutes)."),
    config: Optional[Path] = typer.Option(None, help="YAML file overriding preset settings."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<preset>)."),
    stop_after: Optional[str] = typer.Option(None, help="Last stage to run."),
) -> None:
    """Run the training pipeline stage by stage; finished stages are cached and skipped on re-runs."""
    from dgpo_agent.training.config import load_config
    from dgpo_agent.training.pipeline import run_pipeline

    cfg = load_config(preset, config, out)
    run_pipeline(cfg, stop_after=stop_after)


def _print_summary(title: str, summary: dict) -> None:
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(f"[bold]{title}[/bold]", Pretty(summary))


def main() -> None:
    """Entry point: turn user errors into one line on stderr and exit status 2."""
    from dgpo_agent.errors import DGPOError

    try:
        app()
    except DGPOError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
