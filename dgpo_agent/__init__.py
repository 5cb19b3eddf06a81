"""dgpo-agent: train and deploy compact agentic-RAG models with Distillation-Guided Policy Optimization.

Heavy dependencies (torch, transformers, chromadb, langgraph) load only when the names that need them
are first used, so ``import dgpo_agent`` and ``dgpo-agent --help`` stay instant.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "CompactSearchAgent": "dgpo_agent.agent",
    "AgentOutput": "dgpo_agent.agent",
    "AgentRecord": "dgpo_agent.agent",
    "save_checkpoint": "dgpo_agent.agent",
    "AgentConfig": "dgpo_agent.rollout",
    "run_batch": "dgpo_agent.rollout",
    "build_graph": "dgpo_agent.graph",
    "SamplingParams": "dgpo_agent.backends.base",
    "DGPOError": "dgpo_agent.errors",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dgpo_agent' has no attribute {name!r}")
