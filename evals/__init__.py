"""Evaluation: scoring trajectories against gold answers and evidence (installed as ``dgpo_agent.evals``)."""
