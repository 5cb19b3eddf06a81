"""`dgpo-agent train` on the smoke preset: stages run, cache, resume, and report."""

import json

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.config import load_config
from dgpo_agent.training.pipeline import run_pipeline


def test_smoke_pipeline_runs_caches_and_reports(tmp_path):
    cfg = load_config("smoke", out=tmp_path / "run")
    summaries = run_pipeline(cfg)
    assert list(summaries) == ["world", "index", "oracle"]
    assert summaries["index"]["passages"] == sum(1 for _ in (tmp_path / "run/world/corpus.jsonl").open())
    assert summaries["oracle"]["test"]["em"] >= 0.9 and summaries["oracle"]["test"]["evidence_recall"] >= 0.95
    report = (tmp_path / "run/report.md").read_text()
    assert "| world_3hop |" in report and "## oracle" in report
    rows = [json.loads(line) for line in (tmp_path / "run/oracle/test.jsonl").open()]
    assert len(rows) == summaries["oracle"]["test"]["n"] and all("segments" in r for r in rows)

    # A second run reuses every stage; changing an agent setting re-runs only the oracle stage.
    markers = {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()}
    assert run_pipeline(cfg) == summaries
    assert {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()} == markers
    cfg.agent.top_k = 2
    run_pipeline(cfg)
    after = {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()}
    assert after["world.json"] == markers["world.json"] and after["index.json"] == markers["index.json"]
    assert after["oracle.json"] != markers["oracle.json"]


def test_stop_after_and_config_errors(tmp_path):
    cfg = load_config("smoke", out=tmp_path / "run")
    assert list(run_pipeline(cfg, stop_after="world")) == ["world"]
    with pytest.raises(DGPOError, match="unknown stage"):
        run_pipeline(cfg, stop_after="nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  max_turn: 3\n")
    with pytest.raises(DGPOError, match="unknown setting.*max_turn.*valid are max_turns, top_k"):
        load_config("smoke", bad)
    good = tmp_path / "good.yaml"
    good.write_text("agent:\n  top_k: 5\nworld:\n  seed: 3\n")
    cfg = load_config("smoke", good)
    assert (cfg.agent.top_k, cfg.agent.max_turns, cfg.world.seed, cfg.world.size) == (5, 4, 3, "small")
