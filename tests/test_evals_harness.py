"""The ARC harness end to end: batched runs with exact numbers, the CLI report with the oracle and a tiny
random checkpoint, determinism, resuming, and errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dgpo_agent.backends.base import Completion
from dgpo_agent.cli import app
from dgpo_agent.errors import DGPOError
from dgpo_agent.evals.harness import EvalConfig, evaluate, metrics, model_spec, weights_sha256
from dgpo_agent.protocol import information, render_prompt
from dgpo_agent.rollout import AgentConfig
from tests.fakes import CORPUS, KeywordRetriever

FIXTURES = Path(__file__).parent / "fixtures"


class StoreRetriever(KeywordRetriever):
    """The keyword retriever plus ``get(ids)``, as a Chroma store has, for the evidence probes."""

    def get(self, ids):
        by_id = {d["id"]: d for d in self.corpus}
        return [{**by_id[i], "score": 0.0} for i in ids]


class EvidenceReader:
    """Searches, then answers. Handed the evidence, it names the wrong entity when forced to answer at
    once and the right one when it may think first."""

    def __init__(self):
        self.calls, self.contexts = [], []

    def prompt(self, question, fmt=None):
        return {"role": "prompt", "text": render_prompt(question), "ids": None}

    def encode(self, text):
        return None

    def observe(self, text, after, fmt):
        return {"role": "env", "text": text, "ids": None}

    def generate(self, contexts, params):
        self.calls.append(len(contexts))
        self.contexts += [c.text for c in contexts]
        return [Completion(self._turn(c.text)) for c in contexts]

    @staticmethod
    def _turn(text):
        if text.endswith("<answer>"):
            return " Kreaxse Labs </answer>"
        if text.endswith("<think>"):
            return " it names the founder </think>\n<answer> Zentrath Doglassoun </answer>"
        if "<information>Doc" in text:
            return "<think> found it </think>\n<answer> Zentrath Doglassoun </answer>"
        return "<think> look it up </think>\n<search> Kreaxse Labs founded </search>"


RECORDS = [
    {"id": "a", "question": "Who founded Kreaxse Labs?", "golden_answers": ["Zentrath Doglassoun"],
     "data_source": "nq", "evidence": ["p1"]},
    {"id": "b", "question": "Who set up Kreaxse Labs?", "golden_answers": ["Zentrath Doglassoun"],
     "data_source": "nq", "evidence": ["p1"]},
    {"id": "c", "question": "Who started Kreaxse Labs?", "golden_answers": ["Vellor"], "data_source": "musique"},
]


def test_harness_runs_agent_and_probes_in_batches_with_exact_metrics(tmp_path):
    policy, retriever = EvidenceReader(), StoreRetriever()
    config = EvalConfig(AgentConfig(max_turns=2), batch_size=2)
    rows = evaluate(RECORDS, policy, retriever, config, tmp_path / "t.jsonl")
    # Chunk [a, b]: search turn, answer turn, both probes of both; chunk [c]: two turns, no evidence.
    assert policy.calls == [2, 2, 4, 1, 1]
    assert retriever.calls == [["Kreaxse Labs founded"] * 2, ["Kreaxse Labs founded"]]
    evidence = {**CORPUS[0], "score": 0.0}
    assert policy.contexts[4] == render_prompt(RECORDS[0]["question"]) + information([evidence]) + "<answer>"
    assert policy.contexts[5] == render_prompt(RECORDS[0]["question"]) + information([evidence]) + "<think>"
    result = metrics(rows)
    assert result["nq"] == {
        "n": 2, "em": 1.0, "f1": 1.0, "answered": 1.0, "hit": 1.0, "evidence_recall": 1.0, "searches": 1.0,
        "empty_query": 0.0, "duplicate_query": 0.0, "em_no_think": 0.0, "em_think": 1.0, "think_gain": 1.0,
        "probe_prefilled": 1.0, "think_rate": 1.0, "think_words": 2.5, "invalid": 0.0, "overflow": 0.0, "turns": 2.0,
        "answered_without_search": 0.0, "grounded": 1.0,
    }
    assert result["musique"]["em"] == 0.0 and "em_no_think" not in result["musique"]
    assert result["all"]["n"] == 3 and result["all"]["em"] == 0.6667 and result["all"]["em_think"] == 1.0
    assert rows[0]["probes"]["no_think"]["answer"] == "Kreaxse Labs" and rows[2]["probes"] is None

    one_by_one = evaluate(RECORDS, EvidenceReader(), StoreRetriever(), EvalConfig(AgentConfig(max_turns=2), 1),
                          tmp_path / "seq.jsonl")
    assert one_by_one == rows


def test_a_resume_refuses_rows_that_other_weights_wrote_and_keeps_them(tmp_path):
    path, config = tmp_path / "t.jsonl", EvalConfig(AgentConfig(max_turns=2))
    made_by = {"model": "runs/x/final", "weights_sha256": "aaa"}
    rows = evaluate(RECORDS[:2], EvidenceReader(), StoreRetriever(), config, path, made_by=made_by)
    written = path.read_text()
    policy = EvidenceReader()
    assert evaluate(RECORDS[:2], policy, StoreRetriever(), config, path, made_by=made_by) == rows and policy.calls == []
    with pytest.raises(DGPOError, match=r"other settings or data \(weights_sha256 differ.*delete both files"):
        evaluate(RECORDS, EvidenceReader(), StoreRetriever(), config, path, made_by={**made_by, "weights_sha256": "bbb"})
    with pytest.raises(DGPOError, match=r"\(max_turns differ"):
        evaluate(RECORDS, EvidenceReader(), StoreRetriever(), EvalConfig(AgentConfig(max_turns=3)), path, made_by=made_by)
    assert path.read_text() == written  # nothing appended, nothing lost


def test_a_resume_follows_the_weights_not_the_path_of_a_local_checkpoint(tmp_path):
    path, config = tmp_path / "t.jsonl", EvalConfig(AgentConfig(max_turns=2))
    rows = evaluate(RECORDS[:2], EvidenceReader(), StoreRetriever(), config, path, made_by={"model": "runs/x/final", "weights_sha256": "aaa"})
    moved = {"model": "copies/x/final", "weights_sha256": "aaa"}  # the run directory copied elsewhere
    policy = EvidenceReader()
    assert evaluate(RECORDS[:2], policy, StoreRetriever(), config, path, made_by=moved) == rows and policy.calls == []
    assert json.loads(path.with_suffix(".settings.json").read_text())["model"] == "copies/x/final"
    hub = tmp_path / "hub.jsonl"  # no weights to hash: the spec is all there is
    evaluate(RECORDS[:1], EvidenceReader(), StoreRetriever(), config, hub, made_by={"model": "org/a", "weights_sha256": None})
    with pytest.raises(DGPOError, match=r"\(model differ"):
        evaluate(RECORDS[:1], EvidenceReader(), StoreRetriever(), config, hub, made_by={"model": "org/b", "weights_sha256": None})


def test_weights_digest_follows_the_weight_files_only(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights v1")
    (tmp_path / "config.json").write_text("{}")
    first = weights_sha256(tmp_path)
    (tmp_path / "test.jsonl").write_text("rows")  # what evaluation writes beside the weights
    (tmp_path / "config.json").write_text('{"x": 1}')
    assert weights_sha256(tmp_path) == weights_sha256(str(tmp_path)) == first
    (tmp_path / "model.safetensors").write_bytes(b"weights v2")
    assert weights_sha256(tmp_path) != first
    assert weights_sha256(tmp_path / "model.safetensors") not in (None, first)
    assert weights_sha256("Qwen/Qwen2.5-0.5B-Instruct") is None and weights_sha256("oracle") is None


def test_probes_need_a_store_that_fetches_by_id(tmp_path):
    with pytest.raises(DGPOError, match="cannot fetch passages by id"):
        evaluate(RECORDS[:1], EvidenceReader(), KeywordRetriever(), EvalConfig(), tmp_path / "t.jsonl")


@pytest.mark.parametrize(
    "arg, expected",
    [
        ("oracle", ("oracle", "oracle")),
        ("runs/tiny/student/", ("student", "runs/tiny/student/")),
        ("Qwen/Qwen2.5-0.5B-Instruct", ("Qwen2.5-0.5B-Instruct", "Qwen/Qwen2.5-0.5B-Instruct")),
        ("teacher=runs/tiny/teacher", ("teacher", "runs/tiny/teacher")),
    ],
)
def test_model_names(arg, expected):
    assert model_spec(arg) == expected


# ----------------------------------------------------------------------------------------- CLI


def _eval(*args):
    result = CliRunner().invoke(app, ["eval", *map(str, args)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def test_oracle_report_is_deterministic_and_resumes(tmp_path, small_world, small_store):
    common = ["--model", "oracle", "--data", small_world / "test.jsonl", "--store", small_world / "chroma"]
    first, second = tmp_path / "first", tmp_path / "second"
    output = _eval(*common, "--out", first).output
    _eval(*common, "--out", second, "--batch-size", 7)
    assert (first / "metrics.json").read_bytes() == (second / "metrics.json").read_bytes()
    assert (first / "report.md").read_bytes() == (second / "report.md").read_bytes()
    report = (first / "report.md").read_text()
    assert "## Answer: exact match" in report and "## Answer: token F1" in report  # per data source, as the DGPO issue asks

    result = json.loads((first / "metrics.json").read_text())
    overall = result["models"][0]["metrics"]["all"]
    assert overall["n"] == 120 and overall["hit"] >= 0.95 and overall["em"] >= 0.95
    assert overall["evidence_recall"] >= 0.95 and overall["em_no_think"] == 1.0 and overall["em_think"] == 1.0
    assert overall["probe_prefilled"] == 0.0  # the scripted oracle writes its own turns
    assert f"oracle: EM {overall['em']:.3f}, hit ratio {overall['hit']:.3f}" in output
    for png in ("em_by_source.png", "arc.png"):
        assert (first / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Interrupted mid-line: the cut line is dropped and the run finishes to the same metrics.
    trajectories = second / "trajectories" / "oracle.jsonl"
    lines = trajectories.read_text().splitlines(keepends=True)
    trajectories.write_text("".join(lines[:50]) + lines[50][:100])
    (second / "metrics.json").unlink()
    _eval(*common, "--out", second)
    assert (second / "metrics.json").read_bytes() == (first / "metrics.json").read_bytes()
    assert len(trajectories.read_text().splitlines()) == 120

    changed = CliRunner().invoke(app, ["eval", *map(str, common), "--out", str(second), "--top-k", "2"])
    assert isinstance(changed.exception, DGPOError) and "other settings or data" in str(changed.exception)


def test_compare_the_oracle_and_a_tiny_checkpoint_on_searchr1_data(tmp_path, small_world, small_store):
    from tests.models import tiny_qwen2, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_qwen2(tokenizer).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "report"
    tiny = ["--max-turns", 1, "--max-new-tokens", 8, "--device", "cpu"]
    output = _eval("--model", "oracle", "--model", f"tiny={tmp_path / 'tiny'}", "--data", FIXTURES / "searchr1_mini.parquet",
                   "--store", small_world / "chroma", "--out", out, *tiny).output
    result = json.loads((out / "metrics.json").read_text())
    assert [m["name"] for m in result["models"]] == ["oracle", "tiny"]
    # Every later model is compared with the first, question by question.
    oracle_right = round(result["models"][0]["metrics"]["all"]["em"] * 12)
    [comparison] = result["comparisons"]
    assert (comparison["model"], comparison["reference"], comparison["n"]) == ("tiny", "oracle", 12)
    assert (comparison["better"], comparison["worse"], comparison["high"]) == (0, oracle_right, comparison["high"])
    assert comparison["low"] <= comparison["gain"] == -round(oracle_right / 12, 4) <= comparison["high"] < 0
    assert f"tiny against oracle: EM {comparison['gain']:+.3f}" in output
    assert result["data"]["sources"] == {"hotpotqa": 4, "musique": 4, "nq": 4}
    oracle, random_model = (m["metrics"] for m in result["models"])
    assert set(oracle) == {"all", "hotpotqa", "musique", "nq"}
    assert oracle["nq"]["em"] == 1.0 and oracle["nq"]["searches"] == 1.0  # single-hop: one search each
    assert random_model["all"]["n"] == 12 and random_model["all"]["em"] == 0.0
    report = (out / "report.md").read_text()
    assert "| Method | hotpotqa | musique | nq | all |" in report and "| tiny |" in report
    assert "No question in this data has gold evidence" in report
    assert "## Answer: paired EM gains" in report and f"| tiny | oracle | {oracle_right / 12:.3f} → 0.000 |" in report

    # The same checkpoint on world questions, with evidence: the probes run, and one question per
    # batch gives the same trajectories as the whole batch.
    runs = []
    for batch_size in (6, 1):
        runs.append(tmp_path / f"world{batch_size}")
        _eval("--model", f"tiny={tmp_path / 'tiny'}", "--data", small_world / "test.jsonl", "--limit", 6,
              "--out", runs[-1], "--batch-size", batch_size, *tiny)
    first, second = ((r / "trajectories" / "tiny.jsonl").read_text() for r in runs)
    assert first == second
    rows = [json.loads(line) for line in first.splitlines()]
    assert all(row["probes"]["think"]["text"].startswith("<think>") or not row["probes"]["think"]["prefilled"]
               for row in rows)
    assert "em_think" in json.loads((runs[0] / "metrics.json").read_text())["models"][0]["metrics"]["all"]

    # Retrained in place: the same --out refuses to report the new weights with the old trajectories.
    tiny_qwen2(tokenizer, seed=1).save_pretrained(tmp_path / "tiny")
    again = CliRunner().invoke(app, ["eval", "--model", f"tiny={tmp_path / 'tiny'}", "--data", str(small_world / "test.jsonl"),
                                     "--limit", "6", "--out", str(runs[0]), "--batch-size", "6", *map(str, tiny)])
    assert isinstance(again.exception, DGPOError) and "weights_sha256 differ" in str(again.exception)
    assert (runs[0] / "trajectories" / "tiny.jsonl").read_text() == first


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "oracle", "--data", "/no/such.jsonl"], "no data file at /no/such.jsonl"),
        (["--model", "a=oracle", "--model", "a=/x", "--data", "/no/such.jsonl"], "two models are named 'a'"),
        (["--model", "oracle", "--data", str(FIXTURES / "searchr1_mini.jsonl"), "--store", "/no/store"],
         "no store at /no/store"),
        (["--model", "oracle", "--data", str(FIXTURES / "searchr1_mini.jsonl"), "--batch-size", "0"],
         "--batch-size must be at least 1 (got 0)"),
    ],
)
def test_bad_eval_input_gets_one_line(args, message):
    result = subprocess.run([sys.executable, "-m", "dgpo_agent.cli", "eval", *args], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr
