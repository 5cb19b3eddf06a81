"""Serving: the agent behind ``langgraph dev`` and other servers (installed as ``dgpo_agent.serving``)."""
