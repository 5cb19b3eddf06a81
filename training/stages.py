"""The stages of ``dgpo-agent train``: world (the data) → index → oracle → tokenizer → base models →
teacher → TGO → cold start → RL → results, each ``def stage(run: Run) -> dict``.

Each stage reads what its predecessors wrote into the run folder (``training.run.RunDir`` names every
path) and returns a JSON summary, which the pipeline caches. Every model is a ``save_pretrained``
directory, so the Hugging Face path is the only path, and every model stage ends with the model's
greedy test metrics through the ARC harness.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dgpo_agent.training.rl_config import FROM_BASE, check_method
from dgpo_agent.smollm2 import resolve
from dgpo_agent.training.run import Run


# ------------------------------------------------------------------------------------------ helpers


def load_model(path: str | Path) -> Any:
    """A checkpoint to train or to guide training, in float32 whatever dtype it was saved in: the
    optimizers keep their state in the parameters' dtype, and a bf16 weight loses any update smaller
    than its precision (an RL step at the paper's lr would change almost none). Mixed precision is
    autocast on top (the ``precision`` settings)."""
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _policy(model_dir: str | Path) -> Any:
    from dgpo_agent.backends.transformers import TransformersPolicy

    return TransformersPolicy.from_pretrained(str(model_dir))


def write_agent_record(run: Run, checkpoint: Path) -> None:
    """Record beside a checkpoint the store and agent settings it was trained with, so
    ``CompactSearchAgent.from_pretrained`` and ``dgpo-agent chat`` rebuild that agent."""
    from dgpo_agent.agent import AgentRecord

    cfg = run.cfg
    AgentRecord(
        store=str(run.dir.world.store.resolve()), collection=cfg.store.collection, embedder=cfg.store.embedder,
        max_turns=cfg.agent.max_turns, top_k=cfg.agent.top_k, **dataclasses.asdict(cfg.agent.format()),
    ).write(checkpoint)


def finished(model_dir: Path) -> bool:
    """Whether a stage already made this model: its weights and its agent record, written last. A model
    is recognised by these, not by its intermediate checkpoints, which a user may have deleted."""
    from dgpo_agent.agent import AGENT_FILE

    return (model_dir / "config.json").is_file() and (model_dir / AGENT_FILE).is_file() and any(model_dir.glob("*.safetensors"))


def clear_evaluation(model_dir: Path) -> None:
    """Remove a model folder's test trajectories and metrics before the model is (re)trained: they
    belong to the weights about to be replaced."""
    from dgpo_agent.training.evaluate import METRICS_SUFFIX

    trajectories = Path(model_dir) / "test.jsonl"
    for path in (trajectories, trajectories.with_suffix(METRICS_SUFFIX), trajectories.with_suffix(".settings.json")):
        path.unlink(missing_ok=True)


def evaluate_dir(run: Run, model_dir: str | Path, label: str, out: Path | None = None, questions: int | None = None) -> dict:
    """Greedy test metrics of the model in ``model_dir`` on the first ``eval.questions`` test questions
    (or fewer, ``questions``); trajectories in ``<out or model_dir>/test.jsonl``."""
    from dgpo_agent.evals.harness import model_identity
    from dgpo_agent.training.evaluate import evaluate_policy

    cfg = run.cfg
    agent = cfg.agent.config(cfg.eval.max_new_tokens)
    path = run.dir.test_trajectories(Path(out or model_dir))
    path.parent.mkdir(parents=True, exist_ok=True)
    limits = [n for n in (cfg.eval.questions, questions) if n is not None]
    records = run.questions("test", min(limits) if limits else None)
    return evaluate_policy(_policy(model_dir), records, run.store, agent, path, f"test {label}", model_identity(model_dir))


def _training_args(settings: Any, out: Path, tracking: Any, **extra: Any) -> Any:
    """A supervised stage's ``TrainerSettings`` as the ``DistillConfig`` its ``Trainer`` runs with,
    reporting to the run's trackers."""
    from dgpo_agent.training.distill import DistillConfig

    return DistillConfig(
        output_dir=str(out),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        micro_batch_size=settings.micro_batch_size,
        learning_rate=settings.lr,
        lr_scheduler_type=settings.scheduler,
        warmup_steps=settings.warmup_steps,
        seed=settings.seed,
        logging_steps=settings.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        bf16=settings.precision == "bf16",
        dataloader_pin_memory=False,
        disable_tqdm=True,
        report_to=tracking.report_to or "none",
        **extra,
    )


# ------------------------------------------------------------------------------------------ data stages


TEST_LABELS = {
    "world": "the world's entity-disjoint test split",
    "wikipedia": "the hand-written test questions on the Wikipedia sample",
}


def world_stage(run: Run) -> dict:
    """The run's data in a world folder: the synthetic world generated from its seed, the Wikipedia
    sample with its questions, or your question files (the corpus is indexed where it is)."""
    kind = run.cfg.data.kind
    if kind == "world":
        from dgpo_agent.world import generate_world
        from dgpo_agent.world.kb import WorldConfig

        summary = generate_world(run.dir.world.root, WorldConfig.preset(run.cfg.world.size, seed=run.cfg.world.seed))
    elif kind == "wikipedia":
        from dgpo_agent import wikipedia

        wikipedia.build(run.dir.world.root, articles=run.cfg.data.articles)
        summary = {"source": "gensim's English Wikipedia sample"}
    else:
        from dgpo_agent.training.data_files import write_splits

        summary = write_splits(run.cfg.data, run.dir.world)
    counts = {split: len(run.questions(split)) for split in ("train", "dev", "test")}
    return {**summary, "questions": counts, "test_label": TEST_LABELS.get(kind, f"the test split of {run.test_file}")}


def index_stage(run: Run) -> dict:
    """The corpus embedded into the run's Chroma store."""
    from dgpo_agent.store import Embedder, index_corpus

    s = run.cfg.store
    device = s.device or "cpu"
    embedder = Embedder(s.embedder, device=device) if s.embedder else None
    store = index_corpus(run.corpus_file, run.dir.world.store, s.collection, embedder, s.batch_size, hnsw=s.hnsw(), device=device, rebuild=True)
    return {"passages": store.count()}


def oracle_stage(run: Run) -> dict:
    """Scripted demonstrations over the splits the run needs, with their metrics: the world's oracle,
    or on other data the evidence demonstrator (training questions only, for the teacher's SFT)."""
    from dgpo_agent.training.demonstrations import write_demonstrations

    return write_demonstrations(run)


# ------------------------------------------------------------------------------------------ model stages


def tokenizer_stage(run: Run) -> dict:
    """The world tokenizer: the shipped one, or trained on the passages and training questions."""
    from dgpo_agent.training import starting_point

    if run.cfg.starting_point == "shipped":
        starting_point.install(run, "tokenizer")
        source = "shipped"
    else:
        from dgpo_agent.training.tokenizer import train_tokenizer, world_texts

        questions = [r["question"] for r in run.questions("train")]
        train_tokenizer(world_texts(run.corpus, questions), run.cfg.tokenizer.vocab_size, run.dir.tokenizer)
        source = "trained"
    return {"source": source, "vocab": len(run.tokenizer)}


def base_stage(run: Run) -> dict:
    """Base models: language models of the world's passages with the copy curriculum, no protocol;
    or the student cut from ``base.student_from``.

    From the shipped starting point only the base student is needed (the teacher is shipped trained).
    """
    from dgpo_agent.training import starting_point
    from dgpo_agent.training.pretrain import PretrainConfig, pretrain
    from dgpo_agent.training.zoo import SPECS, build_model, count_params

    cfg, summary = run.cfg, {}
    if cfg.base.student_from:
        summary = cut_student(run)
    elif cfg.starting_point == "shipped":
        starting_point.install(run, "base-student")
        summary["source"] = "shipped"
    else:
        base = cfg.base
        for role, steps in (("student", base.student_steps), ("teacher", base.teacher_steps)):
            model = build_model(SPECS[role], run.tokenizer, seed=base.seed)
            settings = PretrainConfig(
                steps=steps, batch_size=base.batch_size, seq_len=base.seq_len, lr=base.lr,
                copy_fraction=base.copy_fraction, seed=base.seed, save_dir=str(run.dir.base(role)),
            )
            summary[role] = {"params": count_params(model), **pretrain(model, run.tokenizer, run.corpus, settings)}
        summary["source"] = "trained"
    student = run.dir.base("student")
    summary["student_test"] = _shipped_test(run, student) or evaluate_dir(run, student, "base student", questions=cfg.eval.base_questions)
    return summary


def cut_student(run: Run) -> dict:
    """The base student: ``base.student_layers`` evenly spaced decoder layers of ``base.student_from``
    (all of them when unset), saved with its tokenizer."""
    from transformers import AutoTokenizer

    from dgpo_agent.training.zoo import count_params, keep_layers

    source, out = resolve(run.cfg.base.student_from), run.dir.base("student")
    model = load_model(source)
    kept = keep_layers(model, run.cfg.base.student_layers or model.config.num_hidden_layers)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return {"source": run.cfg.base.student_from, "layers_kept": kept, "params": count_params(model)}


def teacher_stage(run: Run) -> dict:
    """The teacher: a named checkpoint as is (``teacher.model``), ``teacher.start_from`` fine-tuned on
    the correct demonstrations, the shipped one, or the base teacher fine-tuned on them
    (``lm_fraction`` of examples from the pretraining stream)."""
    from dgpo_agent.training import starting_point

    cfg, out = run.cfg, run.dir.teacher
    if cfg.teacher.model:
        return {"source": cfg.teacher.model, "test": evaluate_dir(run, run.teacher, "teacher", out)}
    if cfg.teacher.start_from:
        from transformers import AutoTokenizer

        start = resolve(cfg.teacher.start_from)
        return {"source": f"{cfg.teacher.start_from}, fine-tuned", **_fine_tune_teacher(run, start, AutoTokenizer.from_pretrained(start))}
    if cfg.starting_point == "shipped":
        starting_point.install(run, "teacher")
        write_agent_record(run, out)
        return {"source": "shipped", "test": _shipped_test(run, out) or evaluate_dir(run, out, "teacher")}
    return {"source": "trained", **_fine_tune_teacher(run, run.dir.base("teacher"), run.tokenizer)}


def _fine_tune_teacher(run: Run, start: str | Path, tokenizer: Any) -> dict:
    """SFT of ``start`` on the correct training demonstrations into the run's teacher folder; its
    training summary and test metrics."""
    from dgpo_agent.training.callbacks import train_resumable
    from dgpo_agent.training.data import load_examples
    from dgpo_agent.training.distill import DistillTrainer

    cfg, out = run.cfg, run.dir.teacher
    demonstrations = load_examples(run.dir.oracle_split("train"), tokenizer, correct_only=True)
    dataset = with_lm_stream(demonstrations, tokenizer, run.corpus, cfg.teacher.lm_fraction, lm_stream(run, cfg.teacher.seed + 1))
    trainer = DistillTrainer(
        model=load_model(start), args=_training_args(cfg.teacher, out, cfg.tracking), processing_class=tokenizer, train_dataset=dataset,
    )
    metrics = train_resumable(trainer)
    write_agent_record(run, out)
    return {"demonstrations": len(demonstrations), "train": _train_summary(metrics), "test": evaluate_dir(run, out, "teacher")}


def _shipped_test(run: Run, installed: Path) -> dict | None:
    """A shipped model's recorded test metrics when this run's evaluation settings are the ones it
    was scored with (the weights are hash-checked, decoding is greedy), else None."""
    from dgpo_agent.training import starting_point
    from dgpo_agent.training.evaluate import headline

    shipped = run.cfg.starting_point == "shipped" and run.cfg.on_world
    if not shipped or (recorded := starting_point.recorded_test(run.cfg, installed)) is None:
        return None
    return headline(recorded)


def with_lm_stream(dataset: Any, tokenizer: Any, corpus: list[dict], fraction: float, stream: Any) -> Any:
    """Mix pretraining sequences (``stream``, a ``PretrainConfig``; loss on every token) into SFT
    examples as ``fraction`` of all examples: this keeps copying alive (docs/tiny-world.md)."""
    import dataclasses

    from dgpo_agent.training.pretrain import training_sequences

    if fraction <= 0:
        return dataset
    count = round(len(dataset) * fraction / (1 - fraction))
    return with_full_loss(dataset, training_sequences(tokenizer, corpus, dataclasses.replace(stream, steps=count, batch_size=1)))


def with_full_loss(dataset: Any, sequences: list[list[int]]) -> Any:
    """SFT examples followed by ``sequences`` as examples with the loss on every token."""
    from datasets import Dataset, concatenate_datasets

    more = Dataset.from_dict({"input_ids": sequences, "completion_mask": [[1] * len(s) for s in sequences]})
    return concatenate_datasets([dataset.select_columns(["input_ids", "completion_mask"]), more])


def lm_stream(run: Run, seed: int) -> Any:
    """The base stage's pretraining stream, as a supervised stage mixes it in: the world's copy drills
    only on the world, plain passages on any other corpus."""
    from dgpo_agent.training.pretrain import PretrainConfig

    copies = run.cfg.base.copy_fraction if run.cfg.on_world else 0.0
    return PretrainConfig(seq_len=run.cfg.base.seq_len, copy_fraction=copies, seed=seed)


def tgo_stage(run: Run) -> dict:
    """The teacher's sampled rollouts over the training questions, kept with token ids and env mask."""
    from dgpo_agent.training.tgo import check_yield, generate_tgo

    cfg = run.cfg
    report = generate_tgo(_policy(run.teacher), run.store, run.questions("train"), cfg.tgo, cfg.agent.config(), run.dir.tgo)
    check_yield(report)
    return report


def cold_start_stage(run: Run) -> dict:
    """The student distilled on the teacher's correct trajectories: ``method`` and each baseline."""
    methods = run.cfg.cold_start.methods()
    # Baselines first, so the main method's checkpoint is the newest (what `dgpo-agent chat` picks).
    results = {method: _cold_start(run, method) for method in reversed(methods)}
    return {method: results[method] for method in methods}


def _cold_start(run: Run, method: str) -> dict:
    from dgpo_agent.training.callbacks import CURVE, EMCurve, read_log, train_resumable
    from dgpo_agent.training.data import load_examples
    from dgpo_agent.training.distill import DistillTrainer

    c = run.cfg.cold_start
    out = run.dir.cold_start(method)
    if finished(out):
        return {"train": {"steps": c.steps, "reused": True}, "curve": read_log(out / CURVE), "test": evaluate_dir(run, out, f"cold start ({method})")}
    clear_evaluation(out)
    tokenizer = run.student_tokenizer
    teacher = load_model(run.teacher).eval() if method == "kd" else None
    weights = dict(kd_lambda=c.kd_lambda, ce_weight=c.ce_weight, temperature=c.temperature, teacher_top_k=c.teacher_top_k) if teacher else dict(kd_lambda=0.0)
    dataset = with_lm_stream(load_examples(run.dir.tgo, correct_only=True), tokenizer, run.corpus, c.lm_fraction, lm_stream(run, c.seed + 2))
    trainer = DistillTrainer(
        model=load_model(run.base_student), args=_training_args(c, out, run.cfg.tracking, **weights), processing_class=tokenizer,
        teacher_model=teacher, train_dataset=dataset,
    )
    if c.eval_every:
        trainer.add_callback(EMCurve(dev_em(run, tokenizer, c.eval_questions), c.eval_every))
    metrics = train_resumable(trainer)
    write_agent_record(run, out)
    return {"train": _train_summary(metrics), "curve": read_log(out / CURVE), "test": evaluate_dir(run, out, f"cold start ({method})")}


def dev_em(run: Run, tokenizer: Any, questions: int) -> Any:
    """model → EM on the first ``questions`` dev questions, greedy: the training curves' points, and
    what dev-only tuning (``bench/rl_tune.py``) scores settings by."""
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.training.evaluate import quick_em

    cfg = run.cfg
    records = run.questions("dev", questions)
    agent = cfg.agent.config(cfg.eval.max_new_tokens)
    return lambda model: quick_em(TransformersPolicy(model, tokenizer), records, run.store, agent)


def rl_stage(run: Run) -> dict:
    """RL from the cold start: ``method`` (DGPO by default) and each baseline."""
    methods = run.cfg.rl.methods()
    for method in methods:
        check_method(method)
    # Baselines first, so the main method's policy is the newest (what `dgpo-agent chat` picks).
    results = {method: _rl(run, method) for method in reversed(methods)}
    return {method: results[method] for method in methods}


def _rl(run: Run, method: str) -> dict:
    from dgpo_agent.training.callbacks import read_log
    from dgpo_agent.training.callbacks import METRICS

    final = run.dir.policy(method)
    if finished(final):
        start = rl_start(run, method)
    else:
        clear_evaluation(final)
        start = train_rl_method(run, method, run.dir.rl(method))
        write_agent_record(run, final)
    log = read_log(run.dir.rl(method) / METRICS)  # the whole run's, also when this call only resumed its end
    keep = ("reward", "invalid_rate", "search_count", "kl_wrong", "penalised_frac", "entropy", "response_length", "approx_kl")
    return {
        "start": str(start),
        "train": {"steps": run.cfg.rl.max_steps, "last": {k: log[-1].get(k) for k in keep}, "seconds": round(sum(e["step_s"] for e in log), 1)},
        "curve": [{"step": e["step"], "em": e["dev_em"]} for e in log if "dev_em" in e],
        "test": evaluate_dir(run, final, f"rl ({method})"),
    }


def train_rl_method(run: Run, method: str, out: Path) -> Path:
    """Train (or resume) one RL method of the ``rl`` settings into ``out``, with its dev-EM curve on the
    first ``rl.eval_questions`` dev questions every ``rl.eval_every`` steps; returns the policy it
    started from. The pipeline's RL stage and the dev-only tuning bench share it, so they train the
    same thing."""
    from dgpo_agent.training.rl import train_rl

    cfg = run.cfg
    config = cfg.rl.for_method(method, output_dir=str(out), report_to=cfg.tracking.report_to or None)
    start = rl_start(run, method)
    teacher = load_model(run.teacher) if config.guided else None
    agent = cfg.agent.config()
    evaluate = dev_em(run, run.student_tokenizer, cfg.rl.eval_questions) if config.eval_every else None
    train_rl(load_model(start), run.student_tokenizer, rl_questions(run), run.store, agent, config, teacher=teacher, evaluate=evaluate)
    return start


def rl_start(run: Run, method: str) -> Path:
    """The policy an RL method starts from: the cold start, or the base student (``-from-base``)."""
    return Path(run.base_student if method.endswith(FROM_BASE) else run.dir.cold_start(run.cfg.cold_start.method))


def rl_questions(run: Run) -> list[dict]:
    """RL's pool: the training questions TGO did not roll out (the cold start has seen the teacher solve
    those; all of them when TGO used every one), at most ``rl.questions`` of them."""
    train = run.questions("train")
    return (train[run.cfg.tgo.questions or 0 :] or train)[: run.cfg.rl.questions]


def tested_models(run: Run) -> list[tuple[str, Path]]:
    """(name, directory holding test.jsonl) of every model the run trained and tested, in pipeline order."""
    from dgpo_agent.training.evaluate import METRICS_SUFFIX

    cfg = run.cfg
    models = [("base-student", run.dir.base("student")), ("teacher", run.dir.teacher)]
    models += [(f"cold-start-{m}", run.dir.cold_start(m)) for m in cfg.cold_start.methods()]
    if cfg.rl.max_steps:
        models += [(m, run.dir.policy(m)) for m in cfg.rl.methods()]
    return [(name, path) for name, path in models if run.dir.test_trajectories(path).with_suffix(METRICS_SUFFIX).is_file()]


def results_stage(run: Run) -> dict:
    """The ARC report (``run/arc``) of every model the run tested, from their stored test trajectories:
    the paper's tables (methods × data sources for EM, hit ratio, searches, evidence recall; EM given
    the gold evidence), each trained model's paired EM gain over the model it started from, and charts.
    Returns each model's test EM."""
    import json

    from dgpo_agent.evals.harness import EvalConfig, describe_data
    from dgpo_agent.evals.paired import compare
    from dgpo_agent.evals.report import write_report
    from dgpo_agent.training.evaluate import METRICS_SUFFIX

    cfg = run.cfg
    records = run.questions("test", cfg.eval.questions)
    agent = cfg.agent.config(cfg.eval.max_new_tokens)
    tested = tested_models(run)
    trajectories = {name: run.dir.test_trajectories(path) for name, path in tested}
    models = [
        {"name": name, "model": str(path), "metrics": json.loads(trajectories[name].with_suffix(METRICS_SUFFIX).read_text())}
        for name, path in tested
    ]
    comparisons = compare(starting_points(run), trajectories, [r["id"] for r in records])
    data = describe_data(records, run.test_file)
    write_report({"data": data, "settings": EvalConfig(agent).describe(), "models": models, "comparisons": comparisons}, run.dir.arc)
    return {m["name"]: {s: v["em"] for s, v in m["metrics"].items()} for m in models}


def starting_points(run: Run) -> list[tuple[str, str]]:
    """(trained model, the model it started from) by their report names: each cold start from the base
    student, each RL method from the main cold start or, with ``-from-base``, the base student."""
    cold_start = f"cold-start-{run.cfg.cold_start.method}"
    pairs = [(f"cold-start-{m}", "base-student") for m in run.cfg.cold_start.methods()]
    if run.cfg.rl.max_steps:
        pairs += [(m, "base-student" if m.endswith(FROM_BASE) else cold_start) for m in run.cfg.rl.methods()]
    return pairs


def _train_summary(metrics: dict) -> dict:
    keep = ("steps", "resumed_from", "train_loss", "train_runtime", "train_steps_per_second")
    return {k: metrics[k] for k in keep if k in metrics}
