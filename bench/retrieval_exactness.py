"""Does the run's Chroma index return the exact nearest passages, and the same ones every time it is built?

HNSW is approximate: a query can miss a passage nearer than the ones it returns, and which it misses
depends on the graph, which Chroma does not build the same way twice from the same vectors. This
rebuilds the run's index ``--builds`` times under each HNSW setting, from the vectors the run's store
holds (nothing is embedded again but the queries), asks every build the run's own search queries (the
teacher's, from TGO, or those of any file of trajectories, such as the oracle's demonstrations), and
counts the queries whose top-k differs from an exact cosine search over all passages, and from the
first build's. It also times each build and the queries.

    python bench/retrieval_exactness.py --run runs/tiny
    python bench/retrieval_exactness.py --run runs/tiny --settings "" "ef_construction=400,max_neighbors=32,ef_search=400" --out bench/results/retrieval_exactness.json
    python bench/retrieval_exactness.py --run runs/real-cpu --trajectories runs/real-cpu/oracle/train.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from results_file import add_result  # bench/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path("runs/tiny"), help="a run whose index stage has finished")
    parser.add_argument("--trajectories", type=Path, help="JSONL trajectories whose search queries to ask (default: the run's TGO)")
    parser.add_argument("--settings", nargs="+", default=["", "ef_construction=400,max_neighbors=32,ef_search=400"],
                        help="HNSW settings to compare, each key=value,… ('' is Chroma's defaults)")
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--queries", type=int, default=2000, help="the first N search queries of the trajectories")
    parser.add_argument("--k", type=int, default=3, help="passages per query (the agent's top_k)")
    parser.add_argument("--out", type=Path, help="add the result to this JSON file, under the run's path")
    args = parser.parse_args()

    from dgpo_agent.errors import DGPOError
    from dgpo_agent.training.config import PipelineConfig, build
    from dgpo_agent.training.run import Run, RunDir

    folder = RunDir(args.run)
    trajectories = args.trajectories or folder.tgo
    if not folder.config.is_file():
        raise SystemExit(f"error: {args.run} is not a run folder: run `dgpo-agent train --out {args.run} --stop-after index` first")
    if not trajectories.is_file():
        raise SystemExit(f"error: no trajectories at {trajectories}: finish the run's TGO stage or pass --trajectories")
    queries = search_queries(trajectories, args.queries)
    if not queries:
        raise SystemExit(f"error: {trajectories} holds no search queries: pass trajectories that search")
    try:
        store = Run(build(PipelineConfig, json.loads(folder.config.read_text()))).store
    except DGPOError as err:
        raise SystemExit(f"error: {err}") from None
    ids, vectors = stored_vectors(store)
    query_vectors = np.asarray(store.embedder.embed_queries(queries), dtype=np.float32)
    exact = exact_top_k(vectors, query_vectors, ids, args.k)
    result = {"passages": len(ids), "queries": len(queries), "trajectories": str(trajectories), "k": args.k, "builds": args.builds, "settings": {}}
    for text in args.settings:
        hnsw = parse_settings(text)
        result["settings"][text or "chroma defaults"] = row = compare_builds(ids, vectors, query_vectors, exact, hnsw, args.builds, args.k)
        print(text or "chroma defaults", json.dumps(row), flush=True)
    if args.out:
        add_result(args.out, str(args.run), result)


def parse_settings(text: str) -> dict[str, int]:
    """'ef_construction=400,max_neighbors=32' → {'ef_construction': 400, 'max_neighbors': 32}."""
    return {key: int(value) for key, value in (item.split("=") for item in text.split(",") if item)}


def stored_vectors(store) -> tuple[list[str], np.ndarray]:
    """Every passage id of the store and its vector, in id order (so every build adds them alike)."""
    held = store._collection.get(include=["embeddings"])
    order = np.argsort(held["ids"])
    return [held["ids"][i] for i in order], np.asarray(held["embeddings"], dtype=np.float32)[order]


def search_queries(trajectories: Path, limit: int) -> list[str]:
    """The search queries of the trajectories (TGO's rollouts, the oracle's demonstrations), in order."""
    queries = []
    with trajectories.open() as lines:
        for number, line in enumerate(lines, 1):
            try:
                queries += [step["query"] for step in json.loads(line)["steps"] if step["kind"] == "search"]
            except (ValueError, KeyError, TypeError):
                raise SystemExit(f"error: line {number} of {trajectories} is not a trajectory with steps: pass a TGO or oracle JSONL file") from None
            if len(queries) >= limit:
                break
    return queries[:limit]


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, ids: list[str], k: int) -> list[set[str]]:
    """The k passages of highest cosine similarity to each query, by brute force."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = (queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T
    return [{ids[j] for j in np.argsort(-row, kind="stable")[:k]} for row in scores]


def compare_builds(ids, vectors, queries, exact, hnsw: dict[str, int], builds: int, k: int) -> dict:
    """Build the index ``builds`` times with ``hnsw``; per build, the queries whose top-k misses an exact
    neighbour and those whose top-k differs from the first build's, with build and query times."""
    import chromadb

    found, build_s, query_s = [], [], []
    with tempfile.TemporaryDirectory() as scratch:
        for b in range(builds):
            started = time.perf_counter()
            collection = chromadb.PersistentClient(f"{scratch}/{b}").create_collection(
                "bench", configuration={"hnsw": {"space": "cosine", **hnsw}}, embedding_function=None)
            for i in range(0, len(ids), 512):
                collection.add(ids=ids[i : i + 512], embeddings=vectors[i : i + 512])
            build_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            top = []
            for i in range(0, len(queries), 64):
                top += collection.query(query_embeddings=queries[i : i + 64], n_results=k, include=[])["ids"]
            query_s.append(time.perf_counter() - started)
            found.append([set(t) for t in top])
    return {
        "misses_exact": [sum(f != e for f, e in zip(got, exact)) for got in found],
        "differs_from_first_build": [sum(f != g for f, g in zip(got, found[0])) for got in found[1:]],
        "build_s": round(float(np.mean(build_s)), 2),
        "query_ms": round(1000 * float(np.mean(query_s)) / len(queries), 3),
    }


if __name__ == "__main__":
    main()
