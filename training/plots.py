"""The run's training curves as one PNG: loss against steps for every supervised model, the cold
start's dev-EM curve, and each RL run's rollout reward and dev EM against RL steps."""

from __future__ import annotations

from pathlib import Path

from dgpo_agent.training.callbacks import CURVE, METRICS, read_log

TRAINED = ("base/student", "base/teacher", "teacher", "cold_start/kd", "cold_start/seqkd")


def plot_curves(run: Path) -> Path | None:
    """Write ``run/curves.png``; None when nothing has been trained yet."""
    losses = {name: [e for e in read_log(run / name / METRICS) if "loss" in e] for name in TRAINED}
    curves = {name: read_log(run / name / CURVE) for name in TRAINED if name.startswith("cold_start")}
    rl = {path.parent.name: read_log(path) for path in sorted((run / "rl").glob(f"*/{METRICS}"))}
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
    path = run / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
