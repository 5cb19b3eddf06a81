"""The ``dgpo-agent`` command line.

Every command imports what it needs inside its own body, so ``dgpo-agent --help`` answers at once.
User errors (``DGPOError``) print as one line, with no traceback, and exit with status 2.
"""

from __future__ import annotations

import os
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
OBSERVATIONS_HELP = (
    "Where retrieved text and corrections go: inline (in the model's own turn, as Search-R1 and every model "
    "dgpo-agent trains expect) or user (a new user turn: for a chat model that was only prompted)."
)
EXAMPLES_HELP = "Worked examples (0-2) shown before the question as earlier chat turns: 2 for a chat model that was only prompted."
RECORDED = " Default: the checkpoint's, else Search-R1's (inline, 0)."


def _check(option: str, value: float | None, low: float, high: float | None = None) -> None:
    """Refuse an out-of-range option with one line (before anything is loaded or written)."""
    from dgpo_agent.errors import DGPOError

    if value is not None and (value < low or (high is not None and value > high)):
        allowed = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise DGPOError(f"{option} must be {allowed} (got {value})")


def _store_for(world: Path) -> Path:
    from dgpo_agent.world.files import WorldDir

    return WorldDir(world).store


@app.command()
def world(
    seed: int = typer.Option(0, help="Random seed: the same seed writes byte-identical files."),
    out: Path = typer.Option(DEFAULT_WORLD, help="Directory to write the world into."),
    size: str = typer.Option("default", help="'default' (the tiny-model world) or 'small' (for tests)."),
) -> None:
    """Generate the embedded synthetic world: knowledge base, passages and train/dev/test questions."""
    from dgpo_agent.errors import DGPOError
    from dgpo_agent.world import generate_world

    if out.exists() and not out.is_dir():
        raise DGPOError(f"--out {out} is a file: pass a directory to write the world into")
    from dgpo_agent.world.kb import WorldConfig

    summary = generate_world(out, WorldConfig.preset(size, seed=seed))
    _print_summary(f"world written to {out}", summary)


@app.command()
def wikipedia(
    out: Path = typer.Option(Path("wiki-sample"), help="Directory to write the corpus and the questions (its test split) into."),
    words: int = typer.Option(100, help="Words per passage (wiki-18 uses 100)."),
    articles: Optional[int] = typer.Option(None, help="Keep only the first N articles, and the questions about them (a quick try)."),
) -> None:
    """Write a real Wikipedia corpus that ships offline (gensim's sample) and questions about it: training
    questions generated from the articles, dev and test questions written by hand."""
    from dgpo_agent import wikipedia as wiki
    from dgpo_agent.errors import DGPOError

    if out.exists() and not out.is_dir():
        raise DGPOError(f"--out {out} is a file: pass a directory to write the corpus into")
    data = wiki.build(out, words=words, articles=articles)
    typer.echo(f"corpus {data.corpus} and questions {data.questions('test')} written: index with "
               f"`dgpo-agent index {data.corpus} --store {data.store}`, then `dgpo-agent eval --data {data.questions('test')} ...`")


@app.command()
def index(
    corpus: Path = typer.Argument(..., help="JSONL corpus: {id, contents} (wiki-18) or {id, title, text}."),
    store: str = typer.Option(str(_store_for(DEFAULT_WORLD)), help="Chroma directory, or http://host:port of `chroma run`."),
    collection: str = typer.Option("dgpo", help="Chroma collection name."),
    embedder: Optional[str] = typer.Option(None, help="sentence-transformers model name or path (default: packaged all-MiniLM-L6-v2)."),
    query_prefix: str = typer.Option("", help="Prefix for queries, e.g. 'query: ' for e5 models."),
    passage_prefix: str = typer.Option("", help="Prefix for passages, e.g. 'passage: ' for e5 models."),
    batch_size: int = typer.Option(256, help="Passages embedded and added per batch."),
    device: str = typer.Option("cpu", help="Where passages are embedded: cpu, cuda, cuda:N or mps."),
    ef_construction: Optional[int] = typer.Option(None, help="HNSW build-time candidates (Chroma's default 100); fixed at build."),
    max_neighbors: Optional[int] = typer.Option(None, help="HNSW links per node, 'M' (Chroma's default 16); fixed at build."),
    ef_search: Optional[int] = typer.Option(None, help="HNSW query-time candidates (Chroma's default 100); can change later."),
) -> None:
    """Index a corpus into a Chroma store. Re-running adds only what is missing (safe to resume)."""
    from dgpo_agent.store import Embedder, index_corpus

    for option, value in (("--batch-size", batch_size), ("--ef-construction", ef_construction), ("--max-neighbors", max_neighbors), ("--ef-search", ef_search)):
        _check(option, value, 1)

    # Given settings define the embedding space; a store that exists keeps its recorded model.
    space = {"model": embedder, "query_prefix": query_prefix, "passage_prefix": passage_prefix} if embedder or query_prefix or passage_prefix else None
    emb = Embedder(**space, device=device) if space else None
    hnsw = dict(ef_construction=ef_construction, max_neighbors=max_neighbors, ef_search=ef_search)
    result = index_corpus(corpus, store, collection=collection, embedder=emb, batch_size=batch_size, hnsw=hnsw, device=device)
    done = result.last_ingest
    typer.echo(
        f"store {store} (collection {collection}) holds {result.count()} passages: {done['added']} added, {done['updated']} updated, "
        f"{done['removed']} removed, {done['duplicates']} duplicate records skipped"
    )


@app.command()
def ask(
    question: str = typer.Argument(..., help="The question to answer."),
    model: Optional[str] = typer.Option(None, help="Checkpoint directory, Hugging Face name, or server URL."),
    policy: Optional[str] = typer.Option(None, help="'oracle' runs the world's scripted expert (no model needed)."),
    store: Optional[str] = typer.Option(None, help=f"Chroma directory or URL (default: the checkpoint's store, else {_store_for(DEFAULT_WORLD)})."),
    collection: Optional[str] = typer.Option(None, help="Chroma collection (default: the checkpoint's, else dgpo)."),
    max_turns: Optional[int] = typer.Option(None, help="Rounds in which a search is executed (default: the checkpoint's, else 4)."),
    top_k: Optional[int] = typer.Option(None, help="Documents per search (default: the checkpoint's, else 3)."),
    temperature: float = typer.Option(0.0, help="0 decodes greedily."),
    max_new_tokens: int = typer.Option(256, help="Token budget of one turn."),
    json_output: bool = typer.Option(False, "--json", help="Print the answer, steps and documents as one JSON object (for scripts)."),
    observations: Optional[str] = typer.Option(None, help=OBSERVATIONS_HELP + RECORDED),
    examples: Optional[int] = typer.Option(None, help=EXAMPLES_HELP + RECORDED),
) -> None:
    """Answer a question, printing each think, search (with its documents) and the answer."""
    from dgpo_agent.agent import AgentRecord
    from dgpo_agent.rollout import check_question
    from dgpo_agent.errors import DGPOError

    check_question(question)
    if (model is None) == (policy is None):
        raise DGPOError("pass exactly one of --model PATH|NAME|URL or --policy oracle")
    if policy not in (None, "oracle"):
        raise DGPOError(f"unknown policy {policy!r}: the only scripted policy is 'oracle'")
    record = AgentRecord.read(model) if model else None
    store = store or (record.store if record else str(_store_for(DEFAULT_WORLD)))
    agent = _agent(
        model or policy, store, collection=collection, max_turns=max_turns, top_k=top_k, temperature=temperature,
        max_new_tokens=max_new_tokens, observations=observations, examples=examples,
    )
    from dgpo_agent.display import print_step

    if json_output:
        import json

        out = agent.invoke(question)
        typer.echo(json.dumps({k: out[k] for k in ("question", "answer", "steps")}, ensure_ascii=False))
        return
    for step in agent.stream(question):
        print_step(step)


@app.command()
def train(
    preset: str = typer.Option("tiny", help="Settings preset: tiny (default, CPU), smoke (a few minutes), real-cpu (SmolLM2 on real Wikipedia, CPU), real-cpu-smoke, or qwen (GPU)."),
    config: Optional[Path] = typer.Option(None, help="YAML file overriding preset settings."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<preset>)."),
    stop_after: Optional[str] = typer.Option(None, help="Last stage to run."),
) -> None:
    """Run the training pipeline stage by stage; finished stages are cached and skipped on re-runs."""
    from dgpo_agent.training.config import load_config
    from dgpo_agent.training.pipeline import run_pipeline
    from dgpo_agent.training.report import paired_gains
    from dgpo_agent.training.run import RunDir

    cfg = load_config(preset, config, out)
    _quiet_transformers()
    summaries = run_pipeline(cfg, stop_after=stop_after)
    if "results" in summaries:
        _print_summary("test EM (greedy, entity-disjoint test split)", {m: em["all"] for m, em in summaries["results"].items()})
        _print_gains(paired_gains(RunDir(Path(cfg.out))))
    typer.echo(f"report written to {Path(cfg.out) / 'report.md'}")


@app.command()
def prepare(
    out: Path = typer.Option(Path("runs/prepare"), help="Run directory for the preparation (resumable)."),
    ship_to: Optional[Path] = typer.Option(None, help="Where to write the starting point (default: inside the package)."),
    rescore: bool = typer.Option(False, help="Keep the shipped models and only score them again with the tiny preset's evaluation settings (minutes), so default runs reuse those scores."),
) -> None:
    """Train the shipped starting point from scratch (tokenizer, base models, teacher) and export it.

    Resumable: re-run the same command after an interruption. Takes about an hour or more on 2 cores.
    """
    from dgpo_agent.training import starting_point
    from dgpo_agent.training.config import load_config
    from dgpo_agent.training.pipeline import run_pipeline
    from dgpo_agent.training.run import Run

    cfg = load_config("tiny", out=out)
    cfg.starting_point = "shipped" if rescore else "scratch"
    _quiet_transformers()
    summaries = run_pipeline(cfg, stop_after="teacher")
    dest = ship_to or starting_point.ASSETS
    if rescore:
        record = starting_point.rescore(Run(cfg), summaries, dest=dest)
    else:
        record = starting_point.export(Run(cfg), summaries, command=f"dgpo-agent prepare --out {out}", dest=dest)
    _print_summary("shipped starting point", {"teacher test EM": record["scores"]["teacher"]["all"]["em"]})


@app.command("eval")
def eval_(
    model: list[str] = typer.Option(..., help="Model to evaluate, repeatable: 'oracle', a checkpoint, hub name or URL; NAME=MODEL names it."),
    data: Path = typer.Option(..., help="Search-R1-format .parquet or .jsonl questions (e.g. a world's test.jsonl)."),
    store: Optional[str] = typer.Option(None, help="Chroma directory or URL (default: chroma/ beside the data file)."),
    out: Path = typer.Option(Path("eval-report"), help="Report directory; its trajectories make a re-run resume."),
    max_turns: int = typer.Option(4, help="Rounds in which a search is executed."),
    top_k: int = typer.Option(3, help="Documents per search."),
    temperature: float = typer.Option(0.0, help="0 decodes greedily (deterministic)."),
    seed: Optional[int] = typer.Option(None, help="Sampling seed when temperature > 0."),
    max_new_tokens: int = typer.Option(256, help="Token budget of one turn."),
    batch_size: int = typer.Option(256, help="Questions per batched run."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N questions."),
    backend: Optional[str] = typer.Option(None, help="Engine for checkpoints: transformers (default) or vllm."),
    device: Optional[str] = typer.Option(None, help="Device for transformers checkpoints and the query embedder, e.g. cpu or cuda."),
    observations: str = typer.Option("inline", help=OBSERVATIONS_HELP),
    examples: int = typer.Option(0, help=EXAMPLES_HELP),
) -> None:
    """Evaluate models on EM and ARC (query rewriting, source referencing, thinking); write JSON, Markdown and charts."""
    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.evals.data import load_dataset
    from dgpo_agent.evals.harness import EvalConfig, evaluate_models, model_specs
    from dgpo_agent.evals.report import write_report
    from dgpo_agent.protocol import ChatFormat
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.store import open_retriever

    for option, value in (("--max-turns", max_turns), ("--top-k", top_k), ("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        _check(option, value, 1)
    _check("--limit", limit, 0)
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens, seed=seed)
    agent = AgentConfig(max_turns=max_turns, top_k=top_k, sampling=sampling, format=ChatFormat(observations, examples))
    models = model_specs(model)
    records = load_dataset(data, limit)
    config = EvalConfig(agent, batch_size=batch_size)
    retriever = open_retriever(store or str(_store_for(data.parent)), device=device or "cpu")
    options = {k: v for k, v in (("backend", backend), ("device", device)) if v}
    results = evaluate_models(models, records, retriever, config, out, data, **options)
    write_report(results, out)
    for m in results["models"]:
        overall = m["metrics"]["all"]
        typer.echo(f"{m['name']}: EM {overall['em']:.3f}, hit ratio {overall['hit']:.3f}, n {overall['n']}")
    _print_gains(results["comparisons"])
    typer.echo(f"report written to {out / 'report.md'}")


@app.command()
def chat(
    model: Optional[str] = typer.Option(None, help="Checkpoint, Hugging Face name, server URL or 'oracle' (default: the latest trained checkpoint)."),
    store: Optional[str] = typer.Option(None, help="Chroma directory or URL (default: the checkpoint's store, else the latest run's world store)."),
    collection: Optional[str] = typer.Option(None, help="Chroma collection (default: the checkpoint's, else dgpo)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind; 0.0.0.0 opens the demo to your network."),
    port: int = typer.Option(7860, help="Port of the web page."),
    share: bool = typer.Option(False, help="Also open a public gradio.live link."),
    max_turns: Optional[int] = typer.Option(None, help="Initial rounds in which a search is executed (default: the checkpoint's, else 4; adjustable in the page)."),
    top_k: Optional[int] = typer.Option(None, help="Initial documents per search (default: the checkpoint's, else 3; adjustable in the page)."),
    temperature: float = typer.Option(0.0, help="Initial temperature, 0 decodes greedily (adjustable in the page)."),
    observations: Optional[str] = typer.Option(None, help=OBSERVATIONS_HELP + RECORDED),
    examples: Optional[int] = typer.Option(None, help=EXAMPLES_HELP + RECORDED),
) -> None:
    """Open the Gradio chat demo: thoughts, searches and documents stream as steps, the answer is the reply."""
    _check("--port", port, 1, 65535)
    from dgpo_agent.serving.chat import launch
    from dgpo_agent.serving.defaults import resolve, world_examples

    model, store = resolve(model, store)
    agent = _agent(model, store, collection=collection, max_turns=max_turns, top_k=top_k, temperature=temperature,
                   observations=observations, examples=examples)
    launch(agent, world_examples(store), host=host, port=port, share=share)


def _agent(model: str, store: str, **settings: object) -> object:
    """The agent a command line names: the checkpoint's recorded settings (collection, turns, documents
    per search), overridden by the options the user gave (None: not given)."""
    from dgpo_agent.agent import AgentRecord, CompactSearchAgent

    record = AgentRecord.read(model)
    given = {k: v for k, v in settings.items() if v is not None}
    return CompactSearchAgent(model, store, **{**(record.agent_settings() if record else {}), **given})


@app.command(context_settings={"allow_extra_args": True})
def serve(
    ctx: typer.Context,
    model: Optional[str] = typer.Argument(None, help="Checkpoint directory or Hugging Face name (default: the latest trained checkpoint)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8000, help="Port of the OpenAI-compatible API."),
    backend: str = typer.Option("auto", help="auto (vLLM on a CUDA GPU when installed, else transformers), vllm or transformers."),
) -> None:
    """Serve a checkpoint as an OpenAI-compatible completions API; arguments after -- go to `vllm serve`."""
    _check("--port", port, 1, 65535)
    from dgpo_agent.serving.completions_server import serve as run_server
    from dgpo_agent.serving.defaults import default_model

    run_server(model or default_model(), host, port, backend, ctx.args)


def _quiet_transformers() -> None:
    """A pipeline run owns its process: its rich progress replaces transformers' per-load bars, and
    accelerate's note on every RL checkpoint that tied embeddings are saved once is dropped."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def _print_gains(comparisons: list[dict]) -> None:
    """One line per paired comparison (``evals.paired``): the gain, its interval, the questions that moved."""
    for c in comparisons:
        typer.echo(
            f"{c['model']} against {c['reference']}: EM {c['gain']:+.3f} ({c['low']:+.3f} to {c['high']:+.3f}, {c['confidence']:.0%} bootstrap "
            f"over {c['n']} questions; right only with {c['model']} on {c['better']}, only with {c['reference']} on {c['worse']})"
        )


def _print_summary(title: str, summary: dict) -> None:
    from rich.console import Console
    from rich.pretty import Pretty

    Console().print(f"[bold]{title}[/bold]", Pretty(summary))


def main() -> None:
    """Entry point: turn user errors into one line on stderr and exit status 2. Model loading's
    per-file progress bars stay off: commands show their own progress, and errors stay one line."""
    from dgpo_agent.errors import DGPOError

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "transformers" in sys.modules:  # imported before main (tests, notebooks): the variable is read at import
        sys.modules["transformers"].utils.logging.disable_progress_bar()
    try:
        app()
    except DGPOError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
