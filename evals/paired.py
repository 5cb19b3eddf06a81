"""Paired comparisons of two models on the same questions: the EM gain, its bootstrap confidence
interval, and how many questions each model alone answered.

Two checkpoints of one run differ on a few percent of the questions, in both directions, so a gain
of a few points on a few hundred questions can be churn. Pairing by question removes the questions'
difficulty from the comparison; resampling the questions gives the interval a reader needs before
calling one model better (percentile bootstrap, ``scipy.stats.bootstrap``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Mapping, Sequence

from dgpo_agent.errors import DGPOError
from dgpo_agent.trajectories import read_rows

CONFIDENCE = 0.95
RESAMPLES = 10_000
BATCH_VALUES = 10_000_000  # resampled values held at once: bounds memory on evaluation sets of any size


def paired_gain(
    reference: Mapping[str, float], model: Mapping[str, float], seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, float | int]:
    """``model`` − ``reference`` on the questions both scored (per-question scores by id): each one's
    mean, the mean gain and its ``confidence`` interval, and the questions on which each is the better."""
    import numpy as np
    from scipy.stats import bootstrap

    if reference.keys() != model.keys():
        only = len(reference.keys() ^ model.keys())
        raise DGPOError(f"the two models were scored on different questions ({only} scored for one only): compare evaluations of the same questions")
    if not reference:
        raise DGPOError("no questions to compare: evaluate both models first")
    order = sorted(reference)
    before = np.array([reference[q] for q in order], dtype=float)
    diffs = np.array([model[q] for q in order], dtype=float) - before
    interval = bootstrap(
        (diffs,), np.mean, n_resamples=RESAMPLES, batch=max(1, BATCH_VALUES // len(diffs)), method="percentile",
        confidence_level=confidence, rng=np.random.default_rng(seed),
    ).confidence_interval
    return {
        "n": len(diffs),
        "confidence": confidence,
        "reference_mean": round(float(before.mean()), 4),
        "model_mean": round(float((before + diffs).mean()), 4),
        "gain": round(float(diffs.mean()), 4),
        "low": round(float(interval.low), 4),
        "high": round(float(interval.high), 4),
        "better": int((diffs > 0).sum()),
        "worse": int((diffs < 0).sum()),
    }


def question_scores(trajectories: Path, ids: Collection[str] | None = None, metric: str = "em") -> dict[str, float]:
    """The ``metric`` of each question in ``ids`` (None: every question) from a trajectory file the
    harness wrote (which may hold more questions, from an evaluation of more of them)."""
    return {row["id"]: row["scores"][metric] for row in read_rows(trajectories) if ids is None or row["id"] in ids}


def compare(pairs: Sequence[tuple[str, str]], trajectories: Mapping[str, Path], ids: Collection[str]) -> list[dict]:
    """The paired EM gain of each ``(model, reference)`` pair, named as in ``trajectories`` (name →
    trajectory file), on those of the questions ``ids`` that both were scored on (a model may have been
    tested on fewer); a pair without such questions, or naming a model without a trajectory file (one
    scored elsewhere, such as a shipped model), is left out."""
    ids = set(ids)
    scores = {name: question_scores(path, ids) for name, path in trajectories.items() if path.is_file()}
    comparisons = []
    for model, reference in pairs:
        both = scores.get(model, {}).keys() & scores.get(reference, {}).keys()
        if both:
            gain = paired_gain({q: scores[reference][q] for q in both}, {q: scores[model][q] for q in both})
            comparisons.append({"model": model, "reference": reference, **gain})
    return comparisons
