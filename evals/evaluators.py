"""Every metric as an openevals/LangSmith-style evaluator: ``(inputs, outputs, reference_outputs) -> {key, score}``.

``outputs`` is what ``CompactSearchAgent.invoke`` returns (``answer``, ``steps``), optionally with the
harness's ``probes``; ``reference_outputs`` holds the gold answers (``golden_answers``, or ``answer`` /
``answers`` as openevals datasets name them) and, optionally, ``evidence`` ids. A metric undefined for
an example scores None. Plain functions: no API key, network or LangSmith install is needed to call
them, and ``langsmith.evaluate(target, data=…, evaluators=all_evaluators())`` accepts them as they are.
"""

from __future__ import annotations

from typing import Callable, Mapping

from dgpo_agent.errors import DGPOError
from dgpo_agent.evals.metrics import METRICS

Evaluator = Callable[..., dict]


def evaluator(key: str) -> Evaluator:
    """The evaluator for one metric key of ``evals.metrics.METRICS`` (``em``, ``hit``, ``em_think`` …)."""
    if key not in METRICS:
        raise DGPOError(f"unknown metric {key!r}: use one of {', '.join(METRICS)}")
    metric = METRICS[key]

    def evaluate(inputs: Mapping | None = None, outputs: Mapping | None = None,
                 reference_outputs: Mapping | None = None) -> dict:
        return {"key": key, "score": metric.fn(outputs or {}, _record(reference_outputs))}

    evaluate.__name__ = evaluate.__qualname__ = key
    evaluate.__doc__ = metric.description
    return evaluate


def all_evaluators(capability: str | None = None) -> list[Evaluator]:
    """Evaluators for every metric, or for one capability (``answer``, ``query_rewriting`` …)."""
    return [evaluator(k) for k, m in METRICS.items() if capability in (None, m.capability)]


def _record(reference: Mapping | None) -> dict:
    """A question record from ``reference_outputs``."""
    reference = reference or {}
    golds = next((reference[k] for k in ("golden_answers", "answers", "answer") if reference.get(k)), None)
    if golds is None:
        raise DGPOError("reference_outputs has no gold answer: give it 'golden_answers' (or 'answer')")
    return {"golden_answers": [golds] if isinstance(golds, str) else list(golds),
            "evidence": list(reference.get("evidence") or [])}
