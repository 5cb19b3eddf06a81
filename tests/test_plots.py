"""The RL comparison curves: seeds are aligned by step, and a metric a method never logs stays out."""

import pytest

from dgpo_agent.training.plots import plot_rl_seeds, seed_band


def test_seed_band_aligns_seeds_by_step_and_keeps_only_steps_every_seed_logged():
    seed_a = [{"step": 1, "reward": 0.2}, {"step": 2, "reward": 0.4}, {"step": 3, "reward": 0.6}]
    seed_b = [{"step": 2, "reward": 0.8}, {"step": 3, "reward": None}, {"step": 1, "reward": 0.0}]
    steps, mean, low, high = seed_band([seed_a, seed_b], "reward")
    assert steps == [1, 2]  # step 3 has no value in seed b
    assert mean == pytest.approx([0.1, 0.6]) and low == [0.0, 0.4] and high == [0.2, 0.8]
    assert seed_band([seed_a, seed_b], "kl_wrong") == ([], [], [], [])


def test_plot_rl_seeds_writes_a_figure_of_every_method(tmp_path):
    dgpo = [[{"step": s, "reward": 0.5, "kl_wrong": 0.4, "dev_em": 0.3 if s == 2 else None} for s in (1, 2)]] * 2
    ppo = [[{"step": s, "reward": 0.4, "kl_wrong": None} for s in (1, 2)]]
    path = plot_rl_seeds({"dgpo": dgpo, "ppo": ppo}, tmp_path / "figs/compare.png", "test")
    assert path == tmp_path / "figs/compare.png" and path.stat().st_size > 20_000
