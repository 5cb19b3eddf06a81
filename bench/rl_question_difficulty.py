"""How much of an RL run's reward curve is its questions? With new questions at every step, a step's
rollout reward mixes what the policy has learnt with how hard that step's questions are. This rolls
out the policy the run started from on the questions of chosen steps, sampled as the run sampled them
(the same questions, seeds and temperature, so at step 1 it draws the run's own first rollouts), and
sets the run's logged reward beside it: the difference is what RL added on those questions.

The logged reward of a late step is drawn by the policy of that step, on questions it has not yet
trained on. ``--ahead K`` also rolls out the final policy and the starting one on the draws of the K
steps after the run's last: questions neither has seen, drawn with the same seeds, so the difference
is RL's lift on new questions at the end of the run, with the questions' difficulty paired away.

``--by-source`` (with ``--ahead``) splits that lift by question family (``data_source``) and adds
the run's kept checkpoints and its teacher on the same draws: where in the run, and on which
questions, RL's lift comes, and how far each family's sampled reward is from the teacher's.

``--every-step`` replays every step, not only the two ends, and ``--plot`` draws RL's lift step by
step (logged − starting policy, same draws) for every run so replayed in the ``--out`` file, with
runs of one arm (the same parent folder, e.g. ``runs/bench-pool/dgpo``) as one line over seeds.

    python bench/rl_question_difficulty.py --run runs/tiny
    python bench/rl_question_difficulty.py --run runs/bench-pool/dgpo/seed0 --ahead 8
    python bench/rl_question_difficulty.py --run runs/bench-pool/dgpo/seed0 --ahead 16 --by-source
    python bench/rl_question_difficulty.py --run runs/bench-main/dgpo/seed1 --out bench/results/rl_question_difficulty.json
    python bench/rl_question_difficulty.py --run runs/bench-pool/dgpo/seed{0,1,2} --every-step \
        --out bench/results/rl_lift_by_step.json --plot bench/results/rl_lift_by_step.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from results_file import add_result  # bench/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, nargs="+", default=[Path("runs/tiny")], help="runs whose RL stage has finished, one after another")
    parser.add_argument("--method", default="dgpo", help="the RL method of the run to look at")
    parser.add_argument("--window", type=int, default=5, help="steps at each end of the run (the must-show's 5)")
    parser.add_argument("--last", type=int, help="read the run as if it had ended at this step (default: its last logged step)")
    parser.add_argument("--ahead", type=int, default=0, help="also the final and starting policies on the draws of this many steps after the run's last")
    parser.add_argument("--by-source", action="store_true", help="with --ahead: each question family's reward on those draws, for the starting policy, every kept checkpoint, the final policy and the teacher")
    parser.add_argument("--every-step", action="store_true", help="replay every step up to the last, not only the two ends")
    parser.add_argument("--out", type=Path, help="add each run's result to a JSON file, under its path (PATH@LAST with --last)")
    parser.add_argument("--plot", type=Path, help="with --out: draw RL's lift per step for every run of that file replayed at every step")
    args = parser.parse_args()
    if args.plot and not args.out:
        raise SystemExit("error: --plot draws the runs of the --out file: add --out FILE")
    if args.by_source and not args.ahead:
        raise SystemExit("error: --by-source splits the draws after the run's last step: add --ahead K")

    from dgpo_agent.errors import DGPOError

    for run_dir in args.run:
        try:
            row = compare(run_dir, args.method, args.window, args.last, args.ahead, args.every_step, args.by_source)
        except DGPOError as err:
            raise SystemExit(f"error: {err}") from None
        print(json.dumps(row, indent=2))
        if args.out:
            add_result(args.out, f"{run_dir}@{args.last}" if args.last else str(run_dir), row)
    if args.plot:
        print(plot_lift(lift_curves(json.loads(args.out.read_text())), args.plot, args.window))


def compare(
    run_dir: Path, method: str, window: int, last: int | None = None, ahead: int = 0, every_step: bool = False, by_source: bool = False
) -> dict:
    """The run's logged reward and its starting policy's reward on the same rollout draws, per step of
    the first and last ``window`` steps up to step ``last`` (default: the last logged; every step up to
    it with ``every_step``), with each end's mean. With a constant learning rate after a warm-up of the
    same number of steps, a longer run logs up to any step exactly what a run of that many steps logs,
    so it answers for the shorter one.
    With ``ahead``, also both policies on the ``ahead`` steps after the run's last (the final policy
    is the run's own, so not with an earlier ``last``); with ``by_source``, those two, the run's kept
    checkpoints and its teacher on them, per question family."""
    from dgpo_agent.errors import DGPOError
    from dgpo_agent.training import stages
    from dgpo_agent.training.callbacks import METRICS, read_log
    from dgpo_agent.training.config import PipelineConfig, build
    from dgpo_agent.training.run import Run, RunDir

    folder = RunDir(run_dir)
    log_file = folder.rl(method) / METRICS
    if not (folder.config.is_file() and log_file.is_file()):
        raise DGPOError(f"{run_dir} has no finished {method} RL stage: run `dgpo-agent train --out {run_dir}` first")
    run = Run(build(PipelineConfig, json.loads(folder.config.read_text())))
    logged = {e["step"]: e["reward"] for e in read_log(log_file)}
    if last is None:
        last = max(logged)
    elif last not in logged:
        raise DGPOError(f"{run_dir} logged no {method} step {last} (its last is {max(logged)}): pick a logged step with --last")
    if ahead and last != max(logged):
        raise DGPOError(f"--ahead compares the run's final policy, trained to step {max(logged)}: drop --last or --ahead")
    questions, per_step = stages.rl_questions(run), run.cfg.rl.prompts_per_step
    if ahead and (last + ahead) * per_step > len(questions):
        raise DGPOError(f"the {ahead} steps after step {last} need {(last + ahead) * per_step} questions, and RL's pool has {len(questions)}: past it they come back, so they are not new")
    read = range(1, last + 1) if every_step else (*range(1, window + 1), *range(last - window + 1, last + 1))
    steps = sorted(set(read) & logged.keys())
    start = stages.rl_start(run, method)
    later = list(range(last + 1, last + 1 + ahead))
    start_scores = sampled_scores(run, method, stages.load_model(start), questions, steps + later, last)
    start_reward = step_means(start_scores)

    def ends(values: dict[int, float]) -> dict[str, float]:
        first, final = (statistics.fmean(values[s] for s in chosen) for chosen in (steps[:window], steps[-window:]))
        return {"first": round(first, 4), "last": round(final, 4), "rise": round(final - first, 4)}

    row = {
        "start": str(start),
        "steps": steps,
        "logged_reward": {s: logged[s] for s in steps},
        "start_reward": {s: round(start_reward[s], 6) for s in steps},
        "logged": ends(logged),
        "start_policy": ends(start_reward),
        "rl_gain_last": round(statistics.fmean(logged[s] - start_reward[s] for s in steps[-window:]), 4),
    }
    if later:
        final_scores = sampled_scores(run, method, stages.load_model(folder.policy(method)), questions, later, last)
        final_reward = step_means(final_scores)
        row["ahead"] = {
            "steps": later,
            "start_reward": {s: round(start_reward[s], 6) for s in later},
            "final_reward": {s: round(final_reward[s], 6) for s in later},
            "rl_gain": round(statistics.fmean(final_reward[s] - start_reward[s] for s in later), 4),
        }
        if by_source:
            kept = {label: sampled_scores(run, method, load(), questions, later, last) for label, load in kept_policies(folder, method, last)}
            teacher = sampled_scores(run, method, stages.load_model(run.teacher), questions, later, last)
            scores = {"start": start_scores, **kept, "final": final_scores, "teacher": teacher}
            row["ahead"]["by_source"] = {label: source_means(s, later) for label, s in scores.items()}
    return row


WEIGHTS = "model.safetensors"  # a checkpoint's policy weights, under the name a model folder gives them


def kept_policies(folder: Any, method: str, last: int) -> list[tuple[str, Any]]:
    """Each checkpoint the run kept before step ``last``, as (label, loader): its weights under the
    final policy's config and tokenizer."""
    from dgpo_agent.training import stages
    from dgpo_agent.training.rl import checkpoints

    def load(path: Path) -> Any:
        with tempfile.TemporaryDirectory() as model_dir:
            for item in folder.policy(method).iterdir():
                (Path(model_dir) / item.name).symlink_to((path if item.name == WEIGHTS else folder.policy(method)).resolve() / item.name)
            return stages.load_model(model_dir)

    steps = {int(p.name.removeprefix("step-")): p for p in checkpoints(folder.rl(method))}
    return [(f"step {step}", lambda path=path: load(path)) for step, path in steps.items() if step < last]


def source_means(scores: dict[int, list[tuple[str, float]]], steps: list[int]) -> dict[str, dict[str, float]]:
    """The mean reward and the number of rollouts of each question family over ``steps``, and of all."""
    by: dict[str, list[float]] = {}
    for step in steps:
        for source, score in scores[step]:
            by.setdefault(source, []).append(score)
            by.setdefault("all", []).append(score)
    return {source: {"reward": round(statistics.fmean(v), 4), "rollouts": len(v)} for source, v in sorted(by.items())}


def step_means(scores: dict[int, list[tuple[str, float]]]) -> dict[int, float]:
    """Each step's mean reward."""
    return {step: statistics.fmean(score for _, score in pairs) for step, pairs in scores.items()}


def sampled_scores(run: Any, method: str, model: Any, questions: list[dict], steps: list[int], last: int) -> dict[int, list[tuple[str, float]]]:
    """``model``'s (data_source, reward) of each rollout on each step's draws, sampled as the run
    sampled them: that step's questions (from RL's pool, ``questions``), seeds and temperature."""
    from dgpo_agent.training import stages
    from dgpo_agent.training.rl import RLTrainer

    with tempfile.TemporaryDirectory() as scratch:  # the trainer's folder: it never trains or saves here
        config = run.cfg.rl.for_method(method, output_dir=scratch, max_steps=last, eval_every=0)
        teacher = stages.load_model(run.teacher) if config.algorithm == "gkd" else None  # GKD's trainer starts only with its teacher; rollouts never use it
        trainer = RLTrainer(model, run.student_tokenizer, questions, run.store, run.cfg.agent.config(), config, teacher=teacher)
        scored = {}
        for step in steps:
            records, _, scores = trainer.rollouts(step)
            scored[step] = [(r["data_source"], float(s)) for r, s in zip(records, scores.tolist(), strict=True)]
        return scored


def lift_curves(results: dict[str, dict]) -> dict[str, list[list[dict]]]:
    """Each arm's runs (an arm is a run folder's parent) as logs of ``{"step", "lift"}``: the logged
    reward minus the starting policy's on the same draws, at every step. Runs replayed only at their two
    ends are left out: their gap in the middle would draw as a straight line."""
    arms: dict[str, list[list[dict]]] = {}
    for key, row in results.items():
        steps = row.get("steps", [])
        if steps != list(range(1, len(steps) + 1)):
            continue
        lift = [{"step": s, "lift": row["logged_reward"][str(s)] - row["start_reward"][str(s)]} for s in steps]
        arms.setdefault(Path(key.split("@")[0]).parent.name, []).append(lift)
    return arms


def plot_lift(arms: dict[str, list[list[dict]]], path: Path, window: int = 5) -> Path:
    """RL's lift per step, each arm's mean over its runs with their range as a band, and the
    ``window`` steps at each end that the reward-rise bar compares shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgpo_agent.training.plots import seed_band

    if not arms:
        raise SystemExit("error: no run in the --out file was replayed at every step: add --every-step")
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, runs in arms.items():
        steps, mean, low, high = seed_band(runs, "lift")
        line, = ax.plot(steps, mean, marker="o", label=f"{arm} ({len(runs)} seeds)")
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
    last = max(len(run) for runs in arms.values() for run in runs)
    for start, end in ((1, window), (last - window + 1, last)):
        ax.axvspan(start - 0.5, end + 0.5, color="grey", alpha=0.1)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set(title="RL's lift on each step's new questions: logged reward − the cold start's, same draws", xlabel="RL step", ylabel="reward difference")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
