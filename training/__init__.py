"""Training: the staged pipeline behind ``dgpo-agent train`` (installed as ``dgpo_agent.training``)."""
