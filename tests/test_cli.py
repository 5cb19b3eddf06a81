"""The command line: fast help, one-line errors, and world → index → ask with the oracle."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dgpo_agent.cli import app
from dgpo_agent.store import ChromaStore

HEAVY = ("torch", "transformers", "chromadb", "langgraph", "sentence_transformers", "langchain_core")


def run_cli(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "dgpo_agent.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_imports_no_heavy_library():
    code = "import sys; from dgpo_agent.cli import app; print([m for m in %r if m in sys.modules])" % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    help_text = run_cli("--help").stdout
    for command in ("world", "index", "ask", "train"):
        assert command in help_text


@pytest.mark.parametrize(
    "args, message",
    [
        (["ask", "  ", "--policy", "oracle", "--store", "nowhere"], "empty question"),
        (["ask", "Who?", "--model", "/no/such/model", "--store", "nowhere"], "no store at nowhere"),
        (["ask", "Who?", "--store", "nowhere"], "exactly one of --model"),
        (["index", "/no/such/corpus.jsonl", "--store", "/tmp/dgpo-cli-test-store"], "not found"),
        (["index", "/no/such/corpus.jsonl", "--store", "/tmp/dgpo-cli-test-store", "--device", "tpu"], "unknown device 'tpu'"),
        (["train", "--preset", "nope"], "unknown preset"),
        (["ask", "Who?", "--policy", "oracle", "--store", "nowhere", "--observations", "system"], "unknown observations 'system'"),
        (["eval", "--model", "oracle", "--data", "nowhere.jsonl", "--observations", "system"], "unknown observations 'system'"),
    ],
)
def test_bad_input_gets_one_line_and_status_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_model_gets_one_line(small_world, small_store):
    result = run_cli("ask", "Who?", "--model", "/no/such/model", "--store", str(small_world / "chroma"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and "not found" in result.stderr and "Traceback" not in result.stderr


def test_world_index_ask_with_the_oracle(tmp_path, small_world):
    runner = CliRunner()
    out = tmp_path / "w"
    result = runner.invoke(app, ["world", "--size", "small", "--seed", "0", "--out", str(out)])
    assert result.exit_code == 0, result.output
    # Same seed, same files as the session's small world.
    assert (out / "corpus.jsonl").read_bytes() == (small_world / "corpus.jsonl").read_bytes()
    store = tmp_path / "chroma"
    result = runner.invoke(app, ["index", str(out / "corpus.jsonl"), "--store", str(store), "--max-neighbors", "32"])
    assert result.exit_code == 0, result.output
    assert ChromaStore(store).hnsw()["max_neighbors"] == 32
    n_passages = sum(1 for _ in (out / "corpus.jsonl").open())
    assert f"holds {n_passages} passages" in result.output
    record = next(r for r in map(json.loads, (out / "test.jsonl").open()) if r["hops"] == 2)
    result = runner.invoke(app, ["ask", record["question"], "--policy", "oracle", "--store", str(store)])
    assert result.exit_code == 0, result.output
    assert result.output.count("search:") >= 2 and "1." in result.output  # each search with its documents
    assert "answer" in result.output and record["golden_answers"][0] in result.output
