"""The agent graph for the LangGraph Agent Server (``langgraph dev``; see ``langgraph.json``).

The model and the store come from the environment: ``DGPO_MODEL`` (a checkpoint, hub name, server
URL, or ``oracle``, the default) and ``DGPO_STORE`` (default ``dgpo-world/chroma``, what
``dgpo-agent world`` and ``dgpo-agent index`` write).
"""

import os

from dgpo_agent.agent import CompactSearchAgent

agent = CompactSearchAgent(
    os.environ.get("DGPO_MODEL", "oracle"),
    os.environ.get("DGPO_STORE", "dgpo-world/chroma"),
    max_turns=int(os.environ.get("DGPO_MAX_TURNS", "4")),
    top_k=int(os.environ.get("DGPO_TOP_K", "3")),
)
graph = agent.graph
