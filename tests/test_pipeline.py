"""`dgpo-agent train` on the smoke preset: stages run, cache, resume, and report."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.store import ChromaStore
from dgpo_agent.training.config import StoreSettings, load_config
from dgpo_agent.training.pipeline import run_pipeline
from dgpo_agent.training.run import Run, RunDir
from tests.bench_scripts import bench_script

ROOT = Path(__file__).resolve().parents[1]


# The from-scratch path at toy scale: the small world, a small tokenizer, a few steps per model.
SCRATCH = """
starting_point: scratch
world: {size: small}
store: {max_neighbors: 24, ef_search: 150}
tokenizer: {vocab_size: 1024}
base: {student_steps: 40, teacher_steps: 40, seq_len: 128}
teacher: {steps: 40}
eval: {questions: 40, max_new_tokens: 48}
"""


def scratch_config(tmp_path):
    path = tmp_path / "scratch.yaml"
    path.write_text(SCRATCH)
    return load_config("smoke", path, out=tmp_path / "run")


def test_scratch_pipeline_runs_caches_and_reports(tmp_path):
    """Every stage up to the teacher, trained from scratch on the small world; the later stages are
    covered below with a teacher that can answer (this one's 40 steps cannot)."""
    cfg = scratch_config(tmp_path)
    summaries = run_pipeline(cfg, stop_after="teacher")
    assert list(summaries) == ["world", "index", "oracle", "tokenizer", "base", "teacher"]
    assert summaries["index"]["passages"] == sum(1 for _ in (tmp_path / "run/world/corpus.jsonl").open())
    assert ChromaStore(tmp_path / "run/world/chroma", must_exist=True).hnsw() == {
        "ef_construction": 400, "max_neighbors": 24, "ef_search": 150}  # store settings reach the index; the rest is the preset's
    assert summaries["oracle"]["test"]["em"] >= 0.9 and summaries["oracle"]["test"]["evidence_recall"] >= 0.95
    assert list(summaries["oracle"]) == ["train", "dev", "test"]  # the teacher trains on the train demonstrations
    assert summaries["tokenizer"] == {"source": "trained", "vocab": 1024}
    base = summaries["base"]
    assert base["student"]["steps"] == base["teacher"]["steps"] == 40
    assert base["teacher"]["params"] > 2 * base["student"]["params"]
    assert base["student_test"]["all"]["n"] == 40 and base["student_test"]["all"]["em"] <= 0.05
    assert summaries["teacher"]["train"]["steps"] == 40 and summaries["teacher"]["test"]["all"]["n"] == 40
    assert json.loads((tmp_path / "run/teacher/dgpo_agent.json").read_text())["store"].endswith("world/chroma")
    report = (tmp_path / "run/report.md").read_text()
    assert "| world_3hop |" in report and "## oracle" in report and "| base student |" in report and "| teacher |" in report
    assert (tmp_path / "run/curves.png").stat().st_size > 10_000
    logged = [e["step"] for e in map(json.loads, (tmp_path / "run/teacher/metrics.jsonl").open()) if "loss" in e]
    assert logged == [1, 10, 20, 30, 40]

    # A second run reuses every stage; changing an agent setting re-runs the stages that read it.
    markers = {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()}
    assert run_pipeline(cfg, stop_after="teacher") == summaries
    assert {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()} == markers
    cfg.tgo.samples_per_question = 3  # read only by later stages
    run_pipeline(cfg, stop_after="teacher")
    assert {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()} == markers
    cfg.agent.top_k = 2
    run_pipeline(cfg, stop_after="oracle")
    after = {p.name: p.read_text() for p in (tmp_path / "run/.stages").iterdir()}
    assert after["world.json"] == markers["world.json"] and after["index.json"] == markers["index.json"]
    assert after["oracle.json"] != markers["oracle.json"]
    # A store setting that shapes the index when it is built rebuilds the run's index on the next
    # `dgpo-agent train`, where the store's own check refuses to reopen a store with other build settings.
    wider = tmp_path / "wider.yaml"
    wider.write_text(SCRATCH.replace("max_neighbors: 24", "max_neighbors: 32"))
    done = subprocess.run([sys.executable, "-m", "dgpo_agent.cli", "train", "--preset", "smoke", "--config", str(wider),
                           "--out", str(tmp_path / "run"), "--stop-after", "index"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    rebuilt = json.loads((tmp_path / "run/.stages/index.json").read_text())
    assert rebuilt["summary"] == summaries["index"] and rebuilt["fingerprint"] != json.loads(markers["index.json"])["fingerprint"]
    read = f"from dgpo_agent.store import ChromaStore; print(ChromaStore({str(tmp_path / 'run/world/chroma')!r}, must_exist=True).hnsw())"
    built = subprocess.run([sys.executable, "-c", read], capture_output=True, text=True, check=True).stdout  # this process holds the old store open
    assert "'max_neighbors': 32" in built


def test_adding_a_method_trains_only_that_one_and_a_changed_setting_starts_over(tmp_path):
    """A stage training one folder per method keeps the trained ones when only the list of methods
    changes (hours of RL at real scale); any other setting it reads still clears its outputs."""
    from dgpo_agent.training.pipeline import STAGES, _run_stage

    trained = []

    def train_each(run):  # like rl_stage: a finished method's folder is reused as it is
        summary = {}
        for method in run.cfg.rl.methods():
            done = run.dir.policy(method)
            if not done.is_file():
                trained.append(method)
                done.parent.mkdir(parents=True)
                done.write_text(str(run.cfg.rl.learning_rate))
            summary[method] = float(done.read_text())
        return summary

    stage = dataclasses.replace(next(s for s in STAGES if s.name == "rl"), run=train_each)
    cfg = load_config("smoke", out=tmp_path)
    run = Run(cfg)
    cfg.rl.baselines = []
    lr = cfg.rl.learning_rate
    assert _run_stage(stage, run) == {"dgpo": lr}
    cfg.rl.baselines = ["ppo", "grpo"]
    assert _run_stage(stage, run) == {"dgpo": lr, "ppo": lr, "grpo": lr}
    assert trained == ["dgpo", "ppo", "grpo"]
    cfg.rl.method, cfg.rl.baselines = "grpo", ["dgpo"]  # the same methods in other roles: nothing to train
    assert _run_stage(stage, run) == {"grpo": lr, "dgpo": lr}
    assert trained == ["dgpo", "ppo", "grpo"]
    cfg.rl.learning_rate = lr / 2  # a setting every method trains with: all start over
    assert _run_stage(stage, run) == {"grpo": lr / 2, "dgpo": lr / 2}
    assert trained == ["dgpo", "ppo", "grpo", "grpo", "dgpo"]
    assert not run.dir.rl("ppo").exists()


def test_a_run_folder_from_before_outputs_were_recorded_still_notices_a_deleted_model(tmp_path):
    """Markers written before they recorded their stage's outputs: a method's deleted model still
    makes its stage run again, and the stage trains it back."""
    from dgpo_agent.training.pipeline import STAGES, _run_stage, plan

    def train_each(run):
        for method in run.cfg.rl.methods():
            run.dir.policy(method).mkdir(parents=True, exist_ok=True)
        return {}

    stage = dataclasses.replace(next(s for s in STAGES if s.name == "rl"), run=train_each)
    cfg = load_config("smoke", out=tmp_path)
    cfg.rl.baselines = []
    run = Run(cfg)
    _run_stage(stage, run)
    marker = run.dir.marker("rl")
    record = json.loads(marker.read_text())
    assert record.pop("outputs") == ["rl", "rl/dgpo/final"]
    marker.write_text(json.dumps(record))
    assert dict(plan(run))["rl"] == "cached"
    run.dir.policy("dgpo").rmdir()
    assert dict(plan(run))["rl"] == "run again: rl/dgpo/final deleted; train dgpo"
    _run_stage(stage, run)
    assert run.dir.policy("dgpo").is_dir() and dict(plan(run))["rl"] == "cached"


@pytest.mark.parametrize("setting", ["cold_start.warmup_steps", "cold_start.save_steps", "teacher.logging_steps", "rl.save_every", "tgo.top_p"])
def test_every_setting_that_changes_a_stages_output_is_in_its_fingerprint(setting):
    """Warm-up, checkpoint and log intervals used to be hard-coded beside the settings, so changing
    them could not re-run the stage that used them."""
    from dgpo_agent.training.pipeline import STAGES

    cfg = load_config("tiny")
    section, name = setting.split(".")
    owner = next(s for s in STAGES if s.sections[-1] == section or (section == "cold_start" and s.name == "cold-start"))
    before = cfg.fingerprint(*owner.sections)
    value = getattr(getattr(cfg, section), name)
    setattr(getattr(cfg, section), name, value / 2 if isinstance(value, float) else value + 1)
    assert cfg.fingerprint(*owner.sections) != before


def test_model_stages_distil_a_teacher_that_answers_then_run_rl_and_report(small_world, small_store, tmp_path):
    """TGO keeps the teacher's correct rollouts with token ids; the cold start trains KD and SeqKD on
    them, records the dev EM curve and evaluates on test; RL runs DGPO and teacher-free baselines from
    the cold start or the base; the results stage writes the ARC report and the report tabulates every model."""
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.training import stages
    from dgpo_agent.training.data import load_examples
    from dgpo_agent.training.distill import train_sft
    from dgpo_agent.training.report import write_report
    from dgpo_agent.evals.harness import rollout_records
    from dgpo_agent.training.tokenizer import train_tokenizer, world_texts
    from dgpo_agent.training.zoo import ModelSpec, build_model
    from dgpo_agent.world import OraclePolicy, load_questions
    from tests.test_distill import config as trainer_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "world").symlink_to(small_world)
    corpus = [json.loads(line) for line in (small_world / "corpus.jsonl").open()]
    records = load_questions(small_world / "train.jsonl")[:6]
    tokenizer = train_tokenizer(world_texts(corpus, [r["question"] for r in records]), 1024, run / "tokenizer")
    # A teacher that has memorised six oracle demonstrations answers those six questions.
    demos = tmp_path / "demos.jsonl"
    rollout_records(records, OraclePolicy(), small_store, AgentConfig(), demos, label="oracle")
    teacher = build_model(ModelSpec(hidden=96, layers=2, heads=4, kv_heads=4, intermediate=384), tokenizer, seed=0)
    train_sft(teacher, tokenizer, load_examples(demos, tokenizer), trainer_config(tmp_path / "t", max_steps=80, per_device_train_batch_size=6))
    teacher.save_pretrained(run / "teacher")
    tokenizer.save_pretrained(run / "teacher")
    student = build_model(ModelSpec(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=256), tokenizer, seed=1)
    student.save_pretrained(run / "base" / "student")

    cfg = scratch_config(tmp_path)
    cfg.out = str(run)
    cfg.tgo.questions, cfg.tgo.samples_per_question, cfg.tgo.temperature = 6, 2, 0.3
    cfg.cold_start.steps, cfg.cold_start.eval_every, cfg.cold_start.eval_questions = 6, 3, 4
    cfg.eval.questions = 8
    prepared = Run(cfg)
    tgo = stages.tgo_stage(prepared)
    assert tgo["all"]["samples"] == 12 and tgo["all"]["correct"] >= 3
    rows = [json.loads(line) for line in (run / "tgo/train.jsonl").open()]
    assert all(len(r["env_mask"]) == len(r["response_ids"]) and 1 in r["env_mask"] for r in rows)

    cold = stages.cold_start_stage(prepared)
    assert list(cold) == ["kd", "seqkd"]
    for method, result in cold.items():
        assert [point["step"] for point in result["curve"]] == [0, 3, 6]
        assert result["test"]["all"]["n"] == 8 and result["train"]["steps"] == 6
        assert (run / "cold_start" / method / "dgpo_agent.json").is_file()
    kd_log = [json.loads(line) for line in (run / "cold_start/kd/metrics.jsonl").open()]
    assert all(entry["kd"] > 0 for entry in kd_log if "kd" in entry)
    # The main method is written last, so it is the newest checkpoint (what `dgpo-agent chat` picks).
    newest = max(run.glob("cold_start/*/dgpo_agent.json"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.parent.name == "kd"

    cfg.rl.max_steps, cfg.rl.rollout_batch_size, cfg.rl.group_size, cfg.rl.eval_every, cfg.rl.eval_questions = 2, 2, 2, 1, 4
    cfg.rl.max_new_tokens, cfg.rl.learning_rate, cfg.rl.baselines = 48, 1e-3, ["grpo", "ppo-from-base"]
    rl = stages.rl_stage(prepared)
    assert list(rl) == ["dgpo", "grpo", "ppo-from-base"]
    for method, result in rl.items():
        log = [json.loads(line) for line in (run / "rl" / method / "metrics.jsonl").open()]
        assert [e["step"] for e in log] == [1, 2] and all(e["dev_em"] is not None for e in log)
        assert [p["step"] for p in result["curve"]] == [1, 2] and result["test"]["all"]["n"] == 8
        assert (run / "rl" / method / "final" / "dgpo_agent.json").is_file()
        # DGPO measures its KL to the teacher on wrong rollouts; the teacher-free baselines have none.
        assert (log[0]["kl_wrong"] is not None) == (method == "dgpo")
    assert rl["ppo-from-base"]["start"].endswith("base/student") and rl["dgpo"]["start"].endswith("cold_start/kd")
    newest = max(run.glob("rl/*/final/dgpo_agent.json"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.parent.parent.name == "dgpo"

    results = stages.results_stage(prepared)
    assert list(results) == ["cold-start-kd", "cold-start-seqkd", "dgpo", "grpo", "ppo-from-base"]  # the teacher was made by hand, untested
    assert results["dgpo"]["all"] == rl["dgpo"]["test"]["all"]["em"]
    arc = (run / "arc/report.md").read_text()
    assert "| dgpo |" in arc and "| cold-start-kd |" in arc and (run / "arc/arc.png").is_file()
    # Each RL method is compared with the model it started from, question by question; the base
    # student (no test trajectories here) and the teacher (not trained by the run) with none.
    gains = {c["model"]: c for c in json.loads((run / "arc/metrics.json").read_text())["comparisons"]}
    assert {m: gains[m]["reference"] for m in gains} == {"dgpo": "cold-start-kd", "grpo": "cold-start-kd"}
    for method, gain in gains.items():
        assert gain["model_mean"] == results[method]["all"] and gain["reference_mean"] == results["cold-start-kd"]["all"]
        assert abs(gain["gain"] - (gain["model_mean"] - gain["reference_mean"])) <= 1e-4 and gain["low"] <= gain["gain"] <= gain["high"]

    write_report(prepared.dir, {"tgo": tgo, "cold-start": cold, "rl": rl, "results": results})
    report = (run / "report.md").read_text()
    assert "| cold start (kd) |" in report and "| cold start (seqkd) |" in report and "yield" in report
    assert "| dgpo |" in report and "| ppo-from-base |" in report and "arc/report.md" in report
    assert "## Gains over each model's starting point" in report and "| dgpo | cold-start-kd |" in report


def test_smoke_preset_runs_the_default_path_end_to_end(tmp_path):
    """What `dgpo-agent train` does, at a few questions and steps: the default world, the shipped
    starting point installed and scored, TGO, the cold start (KD, and SeqKD beside it), RL (DGPO, and
    GRPO beside it) and the ARC results. The store's collection is not the default one, and the final
    policy is served back against it."""
    cfg = load_config("smoke", out=tmp_path / "run", overrides={"store": {"collection": "other"}})
    summaries = run_pipeline(cfg)
    assert list(summaries) == ["world", "index", "oracle", "tokenizer", "base", "teacher", "tgo", "cold-start", "rl", "results"]
    assert list(summaries["oracle"]) == ["dev", "test"]  # a shipped teacher needs no demonstrations
    assert summaries["tokenizer"]["source"] == summaries["base"]["source"] == summaries["teacher"]["source"] == "shipped"
    assert summaries["base"]["student_test"]["all"]["n"] == summaries["teacher"]["test"]["all"]["n"] == 60
    assert summaries["base"]["student_test"]["all"]["em"] <= 0.05
    assert summaries["teacher"]["test"]["all"]["em"] > summaries["base"]["student_test"]["all"]["em"]
    assert summaries["tgo"]["all"]["samples"] == 64 and summaries["tgo"]["all"]["correct"] > 0
    for method in ("kd", "seqkd"):
        result = summaries["cold-start"][method]
        assert [p["step"] for p in result["curve"]] == [0, 10, 20] and result["test"]["all"]["n"] == 60
    for method in ("dgpo", "grpo"):
        assert [p["step"] for p in summaries["rl"][method]["curve"]] == [1, 2] and summaries["rl"][method]["test"]["all"]["n"] == 60
    assert list(summaries["results"]) == ["base-student", "teacher", "cold-start-kd", "cold-start-seqkd", "dgpo", "grpo"]
    report = (tmp_path / "run/report.md").read_text()
    assert "| teacher |" in report and "| cold start (kd) |" in report and "![training curves](curves.png)" in report
    assert "| dgpo |" in report and (tmp_path / "run/arc/report.md").is_file()
    assert_files_are_where_run_dir_says(RunDir(tmp_path / "run"), cfg)
    assert_served_against_its_own_collection(RunDir(tmp_path / "run"), "other")
    assert_rl_lift_replayed_on_new_questions(tmp_path / "run")
    assert_a_deleted_model_is_trained_again(cfg, RunDir(tmp_path / "run"))


def assert_a_deleted_model_is_trained_again(cfg, run: RunDir) -> None:
    """A model deleted by hand leaves its stage unfinished, not cached: the stage trains it again,
    keeping the other methods' models, and every later stage runs again, so no summary or report
    speaks for a model that is gone."""
    import shutil

    from dgpo_agent.training.pipeline import plan

    def stamps(folder):  # the weights: a kept model is not trained again
        return {p: p.stat().st_mtime_ns for p in folder.glob("*.safetensors")}

    kept = stamps(run.policy("dgpo"))
    assert kept
    shutil.rmtree(run.rl("grpo"))
    steps = dict(plan(Run(cfg)))
    assert steps["cold-start"] == "cached"
    assert steps["rl"] == "run again: rl/grpo/final deleted; train grpo" and steps["results"] == "run again after rl"
    summaries = run_pipeline(cfg)
    assert stamps(run.policy("dgpo")) == kept and (run.policy("grpo") / "config.json").is_file()
    assert list(summaries["results"]) == ["base-student", "teacher", "cold-start-kd", "cold-start-seqkd", "dgpo", "grpo"]
    assert set(dict(plan(Run(cfg))).values()) == {"cached"}


def assert_files_are_where_run_dir_says(run: RunDir, cfg) -> None:
    """Every file a default run writes lies where ``RunDir`` names it, and every stage's folder exists:
    the layout is spelled in one place."""
    named = [run.config, run.report, run.curves, run.world.corpus, run.world.kb, run.world.summary, *map(run.world.questions, ("train", "dev", "test"))]
    folders = [run.world.store, run.oracle, run.tokenizer, run.base("student"), run.teacher, run.tgo.parent, run.arc, run.stages]
    folders += [run.cold_start(m) for m in (cfg.cold_start.method, *cfg.cold_start.baselines)]
    folders += [run.rl(m) for m in cfg.rl.methods()]
    for path in named + folders:
        assert path.exists(), path
    for path in run.root.rglob("*"):
        if path.is_file():
            assert path in named or any(folder in path.parents for folder in folders), f"{path} is not where RunDir says"


def assert_served_against_its_own_collection(run: RunDir, collection: str) -> None:
    """The final checkpoint's record names the run's collection, and both `CompactSearchAgent.from_pretrained`
    and `dgpo-agent chat`'s resolution search it."""
    from dgpo_agent.agent import AgentRecord, CompactSearchAgent
    from dgpo_agent.cli import _agent
    from dgpo_agent.serving.defaults import resolve

    final = run.policy("dgpo")
    record = AgentRecord.read(final)
    assert record.collection == collection and record.store == str(run.world.store.resolve())
    question = "Who founded Kreaxse Labs?"
    for agent in (CompactSearchAgent.from_pretrained(final, max_new_tokens=24), _agent(*resolve(str(final), None), max_new_tokens=24)):
        assert agent.retriever.name == collection
        assert agent.retriever.count() > 0 and agent.invoke(question)["steps"]


def assert_rl_lift_replayed_on_new_questions(run_dir: Path) -> None:
    """`bench/rl_question_difficulty.py --ahead` replays a finished run: both policies on the draws of
    the steps after its last, which it never trained on; it refuses an earlier ``--last`` (the final
    policy is the last step's) and steps past RL's pool (their questions would come back)."""
    module = bench_script("rl_question_difficulty")
    row = module.compare(run_dir, "dgpo", window=1, ahead=1, by_source=True)
    ahead = row["ahead"]
    assert row["steps"] == [1, 2] and ahead["steps"] == [3]
    assert all(0 <= r <= 1 for r in (*ahead["start_reward"].values(), *ahead["final_reward"].values()))
    assert ahead["rl_gain"] == round(ahead["final_reward"][3] - ahead["start_reward"][3], 4)
    with pytest.raises(DGPOError, match="drop --last or --ahead"):
        module.compare(run_dir, "dgpo", window=1, last=1, ahead=1)
    with pytest.raises(DGPOError, match="come back"):
        module.compare(run_dir, "dgpo", window=1, ahead=10_000)
    # GKD's trainer starts only with its teacher; its replay draws what any method's first step drew
    import torch

    from dgpo_agent.training import stages
    from dgpo_agent.training.config import PipelineConfig, build

    run = Run(build(PipelineConfig, json.loads(RunDir(run_dir).config.read_text())))
    gkd = module.step_means(module.sampled_scores(run, "gkd", stages.load_model(stages.rl_start(run, "gkd")), stages.rl_questions(run), [1], 1))
    assert round(gkd[1], 6) == row["start_reward"][1] == row["logged_reward"][1]
    # --by-source: the same draws per question family, for every policy from the start to the teacher
    by_source = ahead["by_source"]
    assert list(by_source)[0] == "start" and list(by_source)[-2:] == ["final", "teacher"]
    assert by_source["start"]["all"]["reward"] == round(ahead["start_reward"][3], 4)
    assert by_source["final"]["all"]["reward"] == round(ahead["final_reward"][3], 4)
    for policy in by_source.values():
        families = {k: v for k, v in policy.items() if k != "all"}
        assert families and sum(v["rollouts"] for v in families.values()) == policy["all"]["rollouts"]
        assert abs(sum(v["reward"] * v["rollouts"] for v in families.values()) / policy["all"]["rollouts"] - policy["all"]["reward"]) < 1e-3
    # a kept checkpoint loads as the policy of its step: the last one holds the final policy's weights
    (label, load), = module.kept_policies(RunDir(run_dir), "dgpo", last=3)
    final = stages.load_model(RunDir(run_dir).policy("dgpo")).state_dict()
    assert label == "step 2" and all(torch.equal(w, final[name]) for name, w in load().state_dict().items())


def test_a_new_optional_setting_keeps_existing_fingerprints_and_a_set_one_changes_them():
    cfg = load_config("tiny")
    before = cfg.fingerprint("store", "rl")

    @dataclasses.dataclass
    class NewerStoreSettings(StoreSettings):  # a release that adds an optional setting
        shards: int | None = None

    cfg.store = NewerStoreSettings(**dataclasses.asdict(cfg.store))
    assert cfg.fingerprint("store", "rl") == before  # existing runs keep their cached stages
    cfg.store.shards = 4
    assert cfg.fingerprint("store", "rl") != before
    cfg.store.shards, cfg.store.ef_search = None, 200
    assert cfg.fingerprint("store", "rl") != before


def test_your_files_train_end_to_end_with_checkpoints_you_name(small_world, tmp_path):
    """Your own question files and corpus (here the small world's, as Search-R1 JSONL, with no dev
    file) and your own teacher and student checkpoints (here the shipped ones): the world's stages are
    not run, the dev split is held out of train, and every model is trained, tested and reported on
    the test file's questions, labelled by that file."""
    from dgpo_agent.training.starting_point import ASSETS

    data = {"train": str(small_world / "train.jsonl"), "test": str(small_world / "test.jsonl"), "corpus": str(small_world / "corpus.jsonl")}
    overrides = {
        "data": {**data, "dev_questions": 16},
        "teacher": {"model": str(ASSETS / "teacher")}, "cold_start": {"student": str(ASSETS / "base-student"), "baselines": []},
        "rl": {"baselines": []}, "eval": {"questions": 16},
    }
    cfg = load_config("smoke", out=tmp_path / "run", overrides=overrides)
    summaries = run_pipeline(cfg)
    assert list(summaries) == ["world", "index", "teacher", "tgo", "cold-start", "rl", "results"]  # no world, oracle or base models
    train = [json.loads(line) for line in (small_world / "train.jsonl").open()]
    assert summaries["world"]["questions"] == {"train": len(train) - 16, "dev": 16, "test": len(list((small_world / "test.jsonl").open()))}
    run = Run(cfg)
    assert [r["id"] for r in run.questions("dev")] == [r["id"] for r in train[-16:]]
    assert not (tmp_path / "run/world/corpus.jsonl").exists() and summaries["index"]["passages"] == len(run.corpus)
    assert summaries["tgo"]["all"]["correct"] > 0 and summaries["rl"]["dgpo"]["test"]["all"]["n"] == 16
    report = (tmp_path / "run/report.md").read_text()
    assert f"## Test EM (greedy, the test split of {small_world / 'test.jsonl'}, through the graph)" in report
    assert "oracle (ceiling)" not in report and "| dgpo |" in report and "invalid-action rate" in report
    arc = json.loads((tmp_path / "run/arc/metrics.json").read_text())
    assert arc["data"]["file"] == data["test"]


def test_a_test_question_also_in_train_is_refused_before_anything_is_written(small_world, tmp_path):
    test = small_world / "test.jsonl"
    train = tmp_path / "train.jsonl"
    train.write_text(test.read_text().splitlines()[3] + "\n" + (small_world / "train.jsonl").read_text())
    cfg = load_config("smoke", out=tmp_path / "run", overrides={
        "data": {"train": str(train), "test": str(test), "corpus": str(small_world / "corpus.jsonl")},
        "teacher": {"model": "t"}, "cold_start": {"student": "s"},
    })
    with pytest.raises(DGPOError, match="is also in train"):
        run_pipeline(cfg)
    assert not (tmp_path / "run/world/train.jsonl").exists()


def test_qwen_preset_loads_and_validates(tmp_path, monkeypatch):
    """The GPU preset is config only here: it loads, names the paper's models, and refuses to start
    without its data with a one-line fix."""
    monkeypatch.chdir(tmp_path)
    cfg = load_config("qwen")
    assert cfg.cold_start.student == "Qwen/Qwen2.5-0.5B-Instruct" and "3b" in cfg.teacher.model
    assert cfg.data.kind == "files" and cfg.fingerprint("data") != load_config("tiny").fingerprint("data")
    with pytest.raises(DGPOError, match=r"data file\(s\) not found: data.train=data/nq_hotpotqa_train/train.parquet"):
        run_pipeline(cfg)
    assert not (tmp_path / "runs").exists()


def test_stop_after_and_config_errors(tmp_path):
    cfg = scratch_config(tmp_path)
    assert list(run_pipeline(cfg, stop_after="world")) == ["world"]
    with pytest.raises(DGPOError, match="unknown stage"):
        run_pipeline(cfg, stop_after="nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("agent:\n  max_turn: 3\n")
    with pytest.raises(DGPOError, match=r"unknown setting\(s\) agent.max_turn: the valid ones in agent are max_turns, top_k"):
        load_config("smoke", bad)
    good = tmp_path / "good.yaml"
    good.write_text("agent:\n  top_k: 5\nworld:\n  seed: 3\n")
    cfg = load_config("smoke", good)
    assert (cfg.agent.top_k, cfg.agent.max_turns, cfg.world.seed, cfg.world.size) == (5, 4, 3, "default")
    # YAML 1.1 reads 3e-4 as a string; numeric settings still get numbers, and non-numbers are named.
    exponent = tmp_path / "exponent.yaml"
    exponent.write_text("rl:\n  learning_rate: 3e-4\n  beta: 1e-3\n")
    cfg = load_config("smoke", exponent, overrides={"rl": {"max_steps": "5"}})
    assert (cfg.rl.learning_rate, cfg.rl.beta, cfg.rl.max_steps) == (3e-4, 1e-3, 5)
    with pytest.raises(DGPOError, match="^rl.learning_rate must be a number, not 'fast'"):
        load_config("smoke", overrides={"rl": {"learning_rate": "fast"}})


def test_a_data_file_replaced_under_the_same_name_changes_the_fingerprint(small_world, tmp_path):
    import os
    import shutil

    test = tmp_path / "test.jsonl"
    shutil.copy(small_world / "test.jsonl", test)
    overrides = {"data": {"train": str(small_world / "train.jsonl"), "test": str(test), "corpus": str(small_world / "corpus.jsonl")},
                 "teacher": {"model": "t"}, "cold_start": {"student": "s"}}
    before = load_config("smoke", overrides=overrides).fingerprint("data")
    assert load_config("smoke", overrides=overrides).fingerprint("data") == before
    test.write_text("".join(test.read_text().splitlines(keepends=True)[:5]))
    os.utime(test, ns=(1, 1))
    assert load_config("smoke", overrides=overrides).fingerprint("data") != before
