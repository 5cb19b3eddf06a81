"""The model stages of ``dgpo-agent train``: tokenizer → base models → teacher → TGO → cold start
→ RL → results.

Each stage reads the run directory its predecessors wrote and returns a JSON summary (the pipeline
caches it). Every model is a ``save_pretrained`` directory, so the Hugging Face path is the only path,
and every model stage ends with the model's greedy test metrics through the ARC harness.

    run/tokenizer/                      the world tokenizer
    run/base/{student,teacher}/         base models (language modelling + copy curriculum)
    run/teacher/                        the teacher (SFT on the oracle's demonstrations)
    run/tgo/train.jsonl                 the teacher's rollouts with token ids and env mask
    run/cold_start/<method>/            the cold-started student(s), with curve.jsonl
    run/rl/<method>/                    RL runs: metrics.jsonl, checkpoints/, final/ (the policy)
    run/<model dir>/test.jsonl          each model's test trajectories (+ test.metrics.json)
    run/arc/                            the ARC report of every model (report.md, metrics.json, PNGs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dgpo_agent.agent import write_store_record
from dgpo_agent.errors import DGPOError
from dgpo_agent.training.config import PipelineConfig

COLD_START_METHODS = ("kd", "seqkd")
RL_METHODS = ("dgpo", "ppo", "grpo", "gkd")
FROM_BASE = "-from-base"
# What each RL method trains: (RLConfig.algorithm, whether the teacher's term is used).
RL_ALGORITHMS = {"dgpo": ("ppo", True), "ppo": ("ppo", False), "grpo": ("grpo", False), "gkd": ("gkd", True)}


# ------------------------------------------------------------------------------------------ helpers


def world_dir(run: Path) -> Path:
    return run / "world"


def store_dir(run: Path) -> Path:
    return run / "world" / "chroma"


def load_tokenizer(run: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(run / "tokenizer")


def load_model(path: str | Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def _corpus(run: Path) -> list[dict]:
    from dgpo_agent.store import read_corpus

    return list(read_corpus(world_dir(run) / "corpus.jsonl"))


def _questions(run: Path, split: str, n: int | None = None) -> list[dict]:
    from dgpo_agent.world import load_questions

    return load_questions(world_dir(run) / f"{split}.jsonl")[:n]


def _store(cfg: PipelineConfig, run: Path) -> Any:
    from dgpo_agent.store import ChromaStore

    return ChromaStore(store_dir(run), cfg.store.collection, must_exist=True)


def _policy(model_dir: str | Path, tokenizer: Any | None = None) -> Any:
    from dgpo_agent.backends.transformers import TransformersPolicy

    if tokenizer is None:
        return TransformersPolicy.from_pretrained(str(model_dir))
    return TransformersPolicy(load_model(model_dir).eval(), tokenizer)


def evaluate_dir(
    cfg: PipelineConfig, run: Path, model_dir: str | Path, label: str, out: Path | None = None, questions: int | None = None
) -> dict:
    """Greedy test metrics of the model in ``model_dir`` on the first ``cfg.eval.questions`` test
    questions (or fewer, ``questions``); trajectories in ``<out or model_dir>/test.jsonl``."""
    from dgpo_agent.evals.harness import model_identity
    from dgpo_agent.training.evaluate import evaluate_policy, greedy_config

    agent = greedy_config(cfg.agent.max_turns, cfg.agent.top_k, cfg.eval.max_new_tokens)
    path = Path(out or model_dir) / "test.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    limits = [n for n in (cfg.eval.questions, questions) if n is not None]
    records = _questions(run, "test", min(limits) if limits else None)
    policy = _policy(model_dir)
    return evaluate_policy(policy, records, _store(cfg, run), agent, path, f"test {label}", model_identity(model_dir))


def _training_args(cfg_section: Any, out: Path, **extra: Any) -> Any:
    """The Trainer settings every SFT/KD stage shares: a cosine schedule over ``steps``, CPU unless a
    GPU is there, checkpoints every 100 steps for resuming, logs every 10."""
    from dgpo_agent.training.distill import DistillConfig

    return DistillConfig(
        output_dir=str(out),
        max_steps=cfg_section.steps,
        per_device_train_batch_size=cfg_section.batch_size,
        learning_rate=cfg_section.lr,
        lr_scheduler_type="cosine",
        warmup_steps=min(20, cfg_section.steps // 10),
        seed=cfg_section.seed,
        logging_steps=10,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=100,
        save_total_limit=2,
        dataloader_pin_memory=False,
        disable_tqdm=True,
        report_to="none",
        **extra,
    )


# ------------------------------------------------------------------------------------------ stages


def tokenizer_stage(cfg: PipelineConfig, run: Path) -> dict:
    """The world tokenizer: the shipped one, or trained on the passages and training questions."""
    from dgpo_agent.training import starting_point

    out = run / "tokenizer"
    if cfg.starting_point == "shipped":
        starting_point.install(cfg, run, "tokenizer", out)
        source = "shipped"
    else:
        from dgpo_agent.training.tokenizer import train_tokenizer, world_texts

        questions = [r["question"] for r in _questions(run, "train")]
        train_tokenizer(world_texts(_corpus(run), questions), cfg.tokenizer.vocab_size, out)
        source = "trained"
    return {"source": source, "vocab": len(load_tokenizer(run))}


def base_stage(cfg: PipelineConfig, run: Path) -> dict:
    """Base models: language models of the world's passages with the copy curriculum, no protocol.

    From the shipped starting point only the base student is needed (the teacher is shipped trained).
    """
    from dgpo_agent.training import starting_point
    from dgpo_agent.training.pretrain import PretrainConfig, pretrain
    from dgpo_agent.training.zoo import SPECS, build_model, count_params

    summary: dict[str, Any] = {}
    if cfg.starting_point == "shipped":
        starting_point.install(cfg, run, "base-student", run / "base" / "student")
        summary["source"] = "shipped"
    else:
        tokenizer, corpus, base = load_tokenizer(run), _corpus(run), cfg.base
        for role, steps in (("student", base.student_steps), ("teacher", base.teacher_steps)):
            model = build_model(SPECS[role], tokenizer, seed=base.seed)
            settings = PretrainConfig(
                steps=steps, batch_size=base.batch_size, seq_len=base.seq_len, lr=base.lr,
                copy_fraction=base.copy_fraction, seed=base.seed, save_dir=str(run / "base" / role),
            )
            summary[role] = {"params": count_params(model), **pretrain(model, tokenizer, corpus, settings)}
        summary["source"] = "trained"
    student = run / "base" / "student"
    summary["student_test"] = _shipped_test(cfg, student) or evaluate_dir(cfg, run, student, "base student", questions=cfg.eval.base_questions)
    return summary


def teacher_stage(cfg: PipelineConfig, run: Path) -> dict:
    """The teacher: a named checkpoint as is, the shipped one, or the base teacher fine-tuned on the
    oracle's correct demonstrations (``lm_fraction`` of examples from the pretraining stream)."""
    from dgpo_agent.training import starting_point

    out = run / "teacher"
    if cfg.teacher.model:
        return {"source": cfg.teacher.model, "test": evaluate_dir(cfg, run, cfg.teacher.model, "teacher", out)}
    if cfg.starting_point == "shipped":
        starting_point.install(cfg, run, "teacher", out)
        write_store_record(out, store_dir(run))
        return {"source": "shipped", "test": _shipped_test(cfg, out) or evaluate_dir(cfg, run, out, "teacher")}
    from dgpo_agent.training.callbacks import train_resumable
    from dgpo_agent.training.distill import DistillTrainer
    from dgpo_agent.training.pretrain import PretrainConfig

    tokenizer = load_tokenizer(run)
    stream = PretrainConfig(seq_len=cfg.base.seq_len, copy_fraction=cfg.base.copy_fraction, seed=cfg.teacher.seed + 1)
    dataset = with_lm_stream(_demonstrations(run, tokenizer), tokenizer, _corpus(run), cfg.teacher.lm_fraction, stream)
    trainer = DistillTrainer(
        model=load_model(run / "base" / "teacher"), args=_training_args(cfg.teacher, out),
        processing_class=tokenizer, train_dataset=dataset,
    )
    metrics = train_resumable(trainer)
    write_store_record(out, store_dir(run))
    return {"source": "trained", "train": _train_summary(metrics), "test": evaluate_dir(cfg, run, out, "teacher")}


def _shipped_test(cfg: PipelineConfig, installed: Path) -> dict | None:
    """A shipped model's recorded test metrics when this run's evaluation settings are the ones it
    was scored with (the weights are hash-checked, decoding is greedy), else None."""
    from dgpo_agent.training import starting_point
    from dgpo_agent.training.evaluate import headline

    if cfg.starting_point != "shipped" or (recorded := starting_point.recorded_test(cfg, installed)) is None:
        return None
    return headline(recorded)


def _demonstrations(run: Path, tokenizer: Any) -> Any:
    from dgpo_agent.training.data import load_examples

    return load_examples(run / "oracle" / "train.jsonl", tokenizer, correct_only=True)


def with_lm_stream(dataset: Any, tokenizer: Any, corpus: list[dict], fraction: float, stream: Any) -> Any:
    """Mix pretraining sequences (``stream``, a ``PretrainConfig``; loss on every token) into SFT
    examples as ``fraction`` of all examples: the tiny-world notes kept copying alive this way."""
    import dataclasses

    from datasets import Dataset, concatenate_datasets

    from dgpo_agent.training.pretrain import training_sequences

    if fraction <= 0:
        return dataset
    count = round(len(dataset) * fraction / (1 - fraction))
    sequences = training_sequences(tokenizer, corpus, dataclasses.replace(stream, steps=count, batch_size=1))
    lm = Dataset.from_dict({"input_ids": sequences, "completion_mask": [[1] * len(s) for s in sequences]})
    return concatenate_datasets([dataset.select_columns(["input_ids", "completion_mask"]), lm])


def tgo_stage(cfg: PipelineConfig, run: Path) -> dict:
    """The teacher's sampled rollouts over the training questions, kept with token ids and env mask."""
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.training.tgo import TGOConfig, generate_tgo

    t = cfg.tgo
    settings = TGOConfig(
        samples_per_question=t.samples_per_question, temperature=t.temperature, max_new_tokens=t.max_new_tokens,
        seed=t.seed, max_questions=t.questions,
    )
    agent = AgentConfig(max_turns=cfg.agent.max_turns, top_k=cfg.agent.top_k)
    teacher = _policy(cfg.teacher.model or run / "teacher")
    report = generate_tgo(teacher, _store(cfg, run), _questions(run, "train"), settings, agent, run / "tgo" / "train.jsonl")
    if report["all"]["correct"] == 0:
        raise DGPOError("the teacher got no training question right, so there is nothing to distil: train the teacher longer")
    return report


def cold_start_stage(cfg: PipelineConfig, run: Path) -> dict:
    """The student distilled on the teacher's correct trajectories: ``method`` and each baseline."""
    methods = [cfg.cold_start.method, *cfg.cold_start.baselines]
    unknown = [m for m in methods if m not in COLD_START_METHODS]
    if unknown:
        raise DGPOError(f"unknown cold-start method(s) {', '.join(unknown)}: choose from {', '.join(COLD_START_METHODS)}")
    # Baselines first, so the main method's checkpoint is the newest (what `dgpo-agent chat` picks).
    results = {method: _cold_start(cfg, run, method) for method in dict.fromkeys(reversed(methods))}
    return {method: results[method] for method in dict.fromkeys(methods)}


def _cold_start(cfg: PipelineConfig, run: Path, method: str) -> dict:
    from dgpo_agent.training.callbacks import EMCurve, read_log, train_resumable
    from dgpo_agent.training.data import load_examples
    from dgpo_agent.training.distill import DistillTrainer
    from dgpo_agent.training.pretrain import PretrainConfig

    c = cfg.cold_start
    out = run / "cold_start" / method
    tokenizer = student_tokenizer(cfg, run)
    teacher = load_model(cfg.teacher.model or run / "teacher").eval() if method == "kd" else None
    weights = dict(kd_lambda=c.kd_lambda, ce_weight=c.ce_weight, temperature=c.temperature) if teacher else dict(kd_lambda=0.0)
    stream = PretrainConfig(seq_len=cfg.base.seq_len, copy_fraction=cfg.base.copy_fraction, seed=c.seed + 2)
    dataset = with_lm_stream(load_examples(run / "tgo" / "train.jsonl", correct_only=True), tokenizer, _corpus(run), c.lm_fraction, stream)
    trainer = DistillTrainer(
        model=load_model(c.student or run / "base" / "student"),
        args=_training_args(c, out, **weights),
        processing_class=tokenizer,
        teacher_model=teacher,
        train_dataset=dataset,
    )
    if c.eval_every:
        trainer.add_callback(EMCurve(dev_em(cfg, run, tokenizer, c.eval_questions), c.eval_every))
    metrics = train_resumable(trainer)
    write_store_record(out, store_dir(run))
    return {
        "train": _train_summary(metrics),
        "curve": read_log(out / "curve.jsonl"),
        "test": evaluate_dir(cfg, run, out, f"cold start ({method})"),
    }


def student_tokenizer(cfg: PipelineConfig, run: Path) -> Any:
    """The student's tokenizer: a given checkpoint's own, or the run's world tokenizer."""
    if cfg.cold_start.student:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cfg.cold_start.student)
    return load_tokenizer(run)


def dev_em(cfg: PipelineConfig, run: Path, tokenizer: Any, questions: int) -> Any:
    """model → EM on the first ``questions`` dev questions, greedy: the training curves' points, and
    what dev-only tuning (``bench/rl_tune.py``) scores settings by."""
    from dgpo_agent.backends.transformers import TransformersPolicy
    from dgpo_agent.training.evaluate import greedy_config, quick_em

    records = _questions(run, "dev", questions)
    agent = greedy_config(cfg.agent.max_turns, cfg.agent.top_k, cfg.eval.max_new_tokens)
    store = _store(cfg, run)
    return lambda model: quick_em(TransformersPolicy(model, tokenizer), records, store, agent)


def rl_stage(cfg: PipelineConfig, run: Path) -> dict:
    """RL from the cold start: ``method`` (DGPO by default) and each teacher-free baseline."""
    methods = [cfg.rl.method, *cfg.rl.baselines]
    unknown = [m for m in methods if m.removesuffix(FROM_BASE) not in RL_METHODS]
    if unknown:
        choices = ", ".join([*RL_METHODS, *(m + FROM_BASE for m in RL_METHODS[1:])])
        raise DGPOError(f"unknown RL method(s) {', '.join(unknown)}: choose from {choices}")
    # Baselines first, so the main method's policy is the newest (what `dgpo-agent chat` picks).
    results = {method: _rl(cfg, run, method) for method in dict.fromkeys(reversed(methods))}
    return {method: results[method] for method in dict.fromkeys(methods)}


def _rl(cfg: PipelineConfig, run: Path, method: str) -> dict:
    from dgpo_agent.training.callbacks import read_log
    from dgpo_agent.training.rl import METRICS_FILE

    r, out = cfg.rl, run / "rl" / method
    start = train_rl_method(cfg, run, method, out)
    final = out / "final"
    write_store_record(final, store_dir(run))
    log = read_log(out / METRICS_FILE)  # the whole run's, also when this call only resumed its end
    keep = ("reward", "valid_action_rate", "search_count", "kl_wrong", "penalised_frac", "entropy", "response_length")
    return {
        "start": str(start),
        "train": {"steps": r.steps, "last": {k: log[-1].get(k) for k in keep}, "seconds": round(sum(e["step_s"] for e in log), 1)},
        "curve": [{"step": e["step"], "em": e["dev_em"]} for e in log if "dev_em" in e],
        "test": evaluate_dir(cfg, run, final, f"rl ({method})"),
    }


def train_rl_method(cfg: PipelineConfig, run: Path, method: str, out: Path) -> Path:
    """Train (or resume) one RL method of ``cfg.rl`` into ``out``, with its dev-EM curve on the first
    ``rl.eval_questions`` dev questions every ``rl.eval_every`` steps; returns the policy it started from.
    The pipeline's RL stage and the dev-only tuning bench share it, so they train the same thing."""
    from dgpo_agent.backends.base import SamplingParams
    from dgpo_agent.rollout import AgentConfig
    from dgpo_agent.training.rl import RLConfig, train_rl

    r = cfg.rl
    algorithm, guided = RL_ALGORITHMS[method.removesuffix(FROM_BASE)]
    start = (cfg.cold_start.student or run / "base" / "student") if method.endswith(FROM_BASE) else run / "cold_start" / cfg.cold_start.method
    config = RLConfig(
        output_dir=str(out), algorithm=algorithm, beta=r.beta, guidance=r.guidance,
        kl_on=("all" if algorithm == "gkd" else r.kl_on) if guided else "none", kl_estimator=r.kl_estimator,
        learning_rate=r.lr, critic_learning_rate=r.critic_lr, warmup_ratio=r.warmup_ratio, critic_warmup_steps=r.critic_warmup_steps,
        rollout_batch_size=max(1, r.rollouts // r.group_size), group_size=r.group_size, ppo_epochs=r.ppo_epochs,
        num_minibatches=r.num_minibatches, max_steps=r.steps, save_every=r.save_every, eval_every=r.eval_every,
        seed=r.seed, temperature=r.temperature,
    )
    tokenizer = student_tokenizer(cfg, run)
    teacher = load_model(cfg.teacher.model or run / "teacher") if guided else None
    agent = AgentConfig(max_turns=cfg.agent.max_turns, top_k=cfg.agent.top_k, sampling=SamplingParams(max_new_tokens=r.max_new_tokens))
    evaluate = dev_em(cfg, run, tokenizer, r.eval_questions) if r.eval_every else None
    train_rl(load_model(start), tokenizer, rl_questions(cfg, run), _store(cfg, run), agent, config, teacher=teacher, evaluate=evaluate)
    return start


def rl_questions(cfg: PipelineConfig, run: Path) -> list[dict]:
    """RL's pool: the training questions TGO did not roll out (the cold start has seen the teacher solve
    those; all of them when TGO used every one), at most ``rl.questions`` of them."""
    train = _questions(run, "train")
    return (train[cfg.tgo.questions or 0 :] or train)[: cfg.rl.questions]


def tested_models(cfg: PipelineConfig, run: Path) -> list[tuple[str, Path]]:
    """(name, directory holding test.jsonl) of every model the run trained and tested, in pipeline order."""
    models = [("base-student", run / "base" / "student"), ("teacher", run / "teacher")]
    models += [(f"cold-start-{m}", run / "cold_start" / m) for m in dict.fromkeys([cfg.cold_start.method, *cfg.cold_start.baselines])]
    if cfg.rl.steps:
        models += [(m, run / "rl" / m / "final") for m in dict.fromkeys([cfg.rl.method, *cfg.rl.baselines])]
    return [(name, path) for name, path in models if (path / "test.metrics.json").is_file()]


def results_stage(cfg: PipelineConfig, run: Path) -> dict:
    """The ARC report (``run/arc``) of every model the run tested, from their stored test trajectories:
    the paper's tables (methods × data sources for EM, hit ratio, searches, evidence recall; EM given
    the gold evidence) and charts. Returns each model's test EM."""
    import json

    from dgpo_agent.evals.harness import EvalConfig, describe_data
    from dgpo_agent.evals.report import write_report
    from dgpo_agent.training.evaluate import greedy_config

    records = _questions(run, "test", cfg.eval.questions)
    agent = greedy_config(cfg.agent.max_turns, cfg.agent.top_k, cfg.eval.max_new_tokens)
    models = [
        {"name": name, "model": str(path), "metrics": json.loads((path / "test.metrics.json").read_text())}
        for name, path in tested_models(cfg, run)
    ]
    results = {"data": describe_data(records, world_dir(run) / "test.jsonl"), "settings": EvalConfig(agent).describe(), "models": models}
    write_report(results, run / "arc")
    return {m["name"]: {s: v["em"] for s, v in m["metrics"].items()} for m in models}


def _train_summary(metrics: dict) -> dict:
    keep = ("steps", "resumed_from", "train_loss", "train_runtime", "train_steps_per_second")
    return {k: metrics[k] for k in keep if k in metrics}
