"""The shipped starting point: export writes a record with hashes and scores; install copies a part
only into a run of the same world and only when every file still matches its hash."""

from __future__ import annotations

import json
import shutil

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.training import starting_point
from dgpo_agent.training.config import load_config
from dgpo_agent.training.run import Run
from tests.models import tiny_qwen2, tiny_tokenizer

SCORES = {"all": {"n": 2, "em": 0.5}}
FULL_METRICS = {"all": {"n": 2, "em": 0.5, "hit": 1.0}, "world_single": {"n": 2, "em": 0.5, "hit": 1.0}}


@pytest.fixture
def prepared(small_world, tmp_path):
    """A run with a world, tokenizer, base student and teacher (tiny random models) and the stage
    markers and evaluations a `dgpo-agent prepare` run leaves."""
    run = tmp_path / "prepare"
    shutil.copytree(small_world, run / "world", ignore=shutil.ignore_patterns("chroma"))
    tok = tiny_tokenizer()
    tok.save_pretrained(run / "tokenizer")
    for sub in ("base/student", "teacher"):
        tiny_qwen2(tok).save_pretrained(run / sub)
        tok.save_pretrained(run / sub)
        (run / sub / "test.metrics.json").write_text(json.dumps(FULL_METRICS))
    (run / ".stages").mkdir()
    (run / ".stages" / "teacher.json").write_text(json.dumps({"fingerprint": "f", "seconds": 12.5, "summary": {}}))
    return run


def small_world_run(run) -> Run:
    cfg = load_config("smoke", out=run)
    cfg.world.size = "small"
    return Run(cfg)


def test_export_then_install_round_trips_every_part(prepared, tmp_path):
    assets = tmp_path / "assets"
    summaries = {"base": {"student_test": SCORES}, "teacher": {"test": SCORES}}
    record = starting_point.export(small_world_run(prepared), summaries, command="dgpo-agent prepare --out x", dest=assets)
    assert record["world"]["settings"] == {"seed": 0, "size": "small"}
    assert record["scores"]["teacher"] == SCORES and record["seconds"] == {"teacher": 12.5}
    assert len(record["first_turns"]) == starting_point.PROBE_QUESTIONS
    assert all(isinstance(t["turn"], str) and t["question"].endswith("?") for t in record["first_turns"])
    assert {"teacher/model.safetensors", "base-student/config.json", "tokenizer/tokenizer.json"} <= set(record["files"])
    assert json.loads((assets / "record.json").read_text()) == record

    run = small_world_run(tmp_path / "run")
    shutil.copytree(prepared / "world", run.dir.world.root)
    for part in starting_point.PARTS:
        starting_point.install(run, part, assets=assets)
        assert (starting_point.part_dir(run.dir, part) / "config.json").is_file() or part == "tokenizer"
    assert (run.dir.teacher / "model.safetensors").read_bytes() == (prepared / "teacher" / "model.safetensors").read_bytes()


def test_recorded_test_metrics_are_reused_only_with_the_settings_they_were_scored_with(prepared, tmp_path):
    run = small_world_run(prepared)
    assets = tmp_path / "assets"
    starting_point.export(run, {"base": {"student_test": SCORES}, "teacher": {"test": SCORES}}, "cmd", dest=assets)
    assert "teacher/test.metrics.json" in json.loads((assets / "record.json").read_text())["files"]
    starting_point.install(run, "teacher", assets=assets)
    teacher = run.dir.teacher
    assert starting_point.recorded_test(run.cfg, teacher, assets=assets) == FULL_METRICS
    for change in (lambda c: setattr(c.eval, "questions", 7), lambda c: setattr(c.agent, "top_k", 5)):
        other = small_world_run(prepared).cfg
        change(other)
        assert starting_point.recorded_test(other, teacher, assets=assets) is None
    (teacher / "test.metrics.json").unlink()
    assert starting_point.recorded_test(run.cfg, teacher, assets=assets) is None


def test_rescored_test_metrics_ship_with_the_settings_they_were_scored_with(prepared, tmp_path):
    """Evaluation settings that change (a wider index) make runs score the shipped models again;
    `prepare --rescore` ships those scores, so later runs with the new settings reuse them."""
    run = small_world_run(prepared)
    assets = tmp_path / "assets"
    starting_point.export(run, {"base": {"student_test": SCORES}, "teacher": {"test": SCORES}}, "cmd", dest=assets)
    wider = small_world_run(tmp_path / "wider")
    wider.cfg.store.ef_search = 300
    shutil.copytree(prepared / "world", wider.dir.world.root)
    for part in ("base-student", "teacher"):
        starting_point.install(wider, part, assets=assets)
    assert starting_point.recorded_test(wider.cfg, wider.dir.teacher, assets=assets) is None
    rescored = {"all": {"n": 2, "em": 1.0, "hit": 1.0}}
    for model in (wider.dir.teacher, wider.dir.base("student")):
        (model / "test.metrics.json").write_text(json.dumps(rescored))  # what the base and teacher stages write
    starting_point.rescore(wider, {"base": {"student_test": rescored}, "teacher": {"test": rescored}}, dest=assets)
    assert starting_point.recorded_test(wider.cfg, wider.dir.teacher, assets=assets) == rescored
    assert starting_point.recorded_test(run.cfg, wider.dir.teacher, assets=assets) is None  # scored with the wider index only
    assert starting_point.read_record(assets)["scores"]["teacher"] == rescored
    starting_point.install(run, "teacher", assets=assets)  # every hash still holds
    (wider.dir.teacher / "model.safetensors").write_bytes(b"another teacher")
    with pytest.raises(DGPOError, match="scored another teacher than the shipped one"):
        starting_point.rescore(wider, {"base": {"student_test": rescored}, "teacher": {"test": rescored}}, dest=assets)


def test_a_default_run_reuses_the_shipped_models_test_metrics(tmp_path):
    """The shipped teacher and base student were scored with the tiny preset's evaluation settings, so
    a default run must not score them again (minutes of the default run's budget). A record compared
    by a hash of how settings were once serialised stopped matching when optional settings were added."""
    for part in ("teacher", "base-student"):
        installed = tmp_path / part
        installed.mkdir()
        shutil.copyfile(starting_point.ASSETS / part / starting_point.METRICS_FILE, installed / starting_point.METRICS_FILE)
        assert starting_point.recorded_test(load_config("tiny"), installed) is not None, part


def test_install_refuses_another_world_and_changed_files(prepared, tmp_path):
    run = small_world_run(prepared)
    assets = tmp_path / "assets"
    starting_point.export(run, {"base": {"student_test": SCORES}, "teacher": {"test": SCORES}}, "cmd", dest=assets)

    other = small_world_run(prepared)
    other.cfg.world.seed = 7
    with pytest.raises(DGPOError, match="belongs to world .*set starting_point: scratch"):
        starting_point.install(other, "teacher", assets=assets)

    (assets / "teacher" / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(DGPOError, match="model.safetensors is missing or changed"):
        starting_point.install(run, "teacher", assets=assets)
    with pytest.raises(DGPOError, match="no shipped starting point .*dgpo-agent prepare"):
        starting_point.read_record(tmp_path / "nowhere")


def test_shipped_teacher_loads_and_reproduces_its_recorded_first_turns():
    """The packaged teacher is the one its record describes: every file matches its hash, and greedy
    decoding reproduces the first turns the record kept (a float near-tie may flip one or two)."""
    record = starting_point.read_record()
    for name, digest in record["files"].items():
        assert starting_point.sha256(starting_point.ASSETS / name) == digest, name
    assert record["scores"]["teacher"]["all"]["n"] == 600 and record["scores"]["base_student"]["all"]["em"] <= 0.05

    probes = record["first_turns"]
    turns = starting_point.first_turns(
        starting_point.ASSETS / "teacher", [p["question"] for p in probes], record["config"]["eval"]["max_new_tokens"]
    )
    same = sum(turn == p["turn"] for turn, p in zip(turns, probes))
    assert len(probes) == starting_point.PROBE_QUESTIONS and same >= 0.9 * len(probes)
