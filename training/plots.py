"""The run's training curves as one PNG: loss against steps for every trained model, and the cold
start's EM curve (dev, greedy, through the graph) against steps."""

from __future__ import annotations

from pathlib import Path

from dgpo_agent.training.callbacks import CURVE, METRICS, read_log

TRAINED = ("base/student", "base/teacher", "teacher", "cold_start/kd", "cold_start/seqkd")


def plot_curves(run: Path) -> Path | None:
    """Write ``run/curves.png``; None when nothing has been trained yet."""
    losses = {name: read_log(run / name / METRICS) for name in TRAINED}
    losses = {name: [e for e in log if "loss" in e] for name, log in losses.items()}
    curves = {name: read_log(run / name / CURVE) for name in TRAINED if name.startswith("cold_start")}
    if not any(losses.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_em) = plt.subplots(1, 2, figsize=(11, 4))
    for name, log in losses.items():
        if log:
            ax_loss.plot([e["step"] for e in log], [e["loss"] for e in log], label=name)
    ax_loss.set(title="training loss", xlabel="optimiser step", ylabel="loss", yscale="log")
    ax_loss.legend(fontsize=8)
    for name, log in curves.items():
        if log:
            ax_em.plot([e["step"] for e in log], [e["em"] for e in log], marker="o", label=f"{name} EM")
    ax_em.set(title="cold start: dev EM (greedy, through the graph)", xlabel="optimiser step", ylabel="EM", ylim=(0, 1))
    if any(curves.values()):
        ax_em.legend(fontsize=8)
    fig.tight_layout()
    path = run / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
