"""The agent graph for the LangGraph Agent Server (``langgraph dev``; see ``langgraph.json``).

The model and the store come from the environment: ``DGPO_MODEL`` (a checkpoint, hub name, server
URL, or ``oracle``, the default) and ``DGPO_STORE``. A checkpoint brings its own store, collection,
turns and documents per search from its record; without one the store defaults to the one
``dgpo-agent world`` and ``dgpo-agent index`` write. ``DGPO_MAX_TURNS`` and ``DGPO_TOP_K`` override.
"""

import os

from dgpo_agent.agent import AgentRecord, CompactSearchAgent
from dgpo_agent.serving.defaults import DEFAULT_WORLD

model = os.environ.get("DGPO_MODEL", "oracle")
record = AgentRecord.read(model)
settings = record.agent_settings() if record else {}
for key in ("max_turns", "top_k"):
    if f"DGPO_{key.upper()}" in os.environ:
        settings[key] = int(os.environ[f"DGPO_{key.upper()}"])
store = os.environ.get("DGPO_STORE") or (record.store if record else str(DEFAULT_WORLD.store))
agent = CompactSearchAgent(model, store, **settings)
graph = agent.graph
