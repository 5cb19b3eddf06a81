"""Training curves as PNGs: a run's own (loss against steps for every supervised model, the cold
start's dev-EM curve, each RL run's rollout reward and dev EM), and RL methods compared over seeds."""

from __future__ import annotations

from pathlib import Path

from dgpo_agent.training.callbacks import CURVE, METRICS, read_log
from dgpo_agent.training.run import RunDir


def plot_curves(run: RunDir) -> Path | None:
    """Write the run's ``curves.png``; None when nothing has been trained yet."""

    def name(path: Path) -> str:
        return str(path.relative_to(run.root))

    trained = [run.base("student"), run.base("teacher"), run.teacher, *run.cold_starts()]
    losses = {name(path): [e for e in read_log(path / METRICS) if "loss" in e] for path in trained}
    curves = {name(path): read_log(path / CURVE) for path in run.cold_starts()}
    rl = {path.name: read_log(path / METRICS) for path in run.rl_runs()}
    if not any(losses.values()) and not any(rl.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_em, ax_rl) = plt.subplots(1, 3, figsize=(16, 4))
    for name, log in losses.items():
        if log:
            ax_loss.plot([e["step"] for e in log], [e["loss"] for e in log], label=name)
    ax_loss.set(title="training loss", xlabel="optimiser step", ylabel="loss", yscale="log")
    for name, log in curves.items():
        if log:
            ax_em.plot([e["step"] for e in log], [e["em"] for e in log], marker="o", label=f"{name} EM")
    ax_em.set(title="cold start: dev EM (greedy, through the graph)", xlabel="optimiser step", ylabel="EM", ylim=(0, 1))
    for name, log in rl.items():
        if log:
            line, = ax_rl.plot([e["step"] for e in log], [e["reward"] for e in log], alpha=0.6, label=f"{name} rollout reward")
            dev = [e for e in log if "dev_em" in e]
            ax_rl.plot([e["step"] for e in dev], [e["dev_em"] for e in dev], marker="o", color=line.get_color(), label=f"{name} dev EM")
    ax_rl.set(title="RL: rollout reward (sampled) and dev EM (greedy)", xlabel="RL step", ylabel="EM", ylim=(0, 1))
    for ax in (ax_loss, ax_em, ax_rl):
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run.curves, dpi=100)
    plt.close(fig)
    return run.curves


RL_PANELS = (
    ("reward", "rollout reward (sampled)"),
    ("dev_em", "dev EM (greedy)"),
    ("kl_wrong", "KL to the teacher on wrong rollouts (nats/token)"),
    ("entropy", "entropy (nats/token)"),
    ("response_length", "response length (tokens)"),
    ("search_count", "searches per rollout"),
)


def seed_band(logs: list[list[dict]], key: str) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps at which every seed logged ``key``, with the mean, min and max over seeds there.

    Seeds are aligned by step, not by line, so a run resumed or cut short never shifts the others.
    """
    by_seed = [{e["step"]: e[key] for e in log if e.get(key) is not None} for log in logs]
    steps = sorted(set.intersection(*(set(s) for s in by_seed))) if by_seed else []
    values = [[s[step] for s in by_seed] for step in steps]
    return steps, [sum(v) / len(v) for v in values], [min(v) for v in values], [max(v) for v in values]


def plot_rl_seeds(logs: dict[str, list[list[dict]]], path: Path, title: str) -> Path:
    """RL methods side by side over seeds: each panel's line is the mean over seeds, its band their
    range. A method that does not log a metric (PPO has no teacher KL) is left out of that panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    for ax, (key, label) in zip(axes.flat, RL_PANELS):
        for method, runs in logs.items():
            steps, mean, low, high = seed_band(runs, key)
            if steps:
                line, = ax.plot(steps, mean, marker="o" if key == "dev_em" else None, label=f"{method} ({len(runs)} seeds)")
                ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        ax.set(title=label, xlabel="RL step")
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
