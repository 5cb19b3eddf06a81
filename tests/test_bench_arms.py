"""The bench's arms files are checked like any run config, before anything trains: an arm with a bad
setting must fail in a second, not after the arms before it have trained for hours."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from dgpo_agent.errors import DGPOError
from dgpo_agent.training.run import RunDir

ROOT = Path(__file__).resolve().parents[1]
ARMS_FILES = sorted((ROOT / "bench" / "arms").glob("*.yaml"))


def _rl_compare():
    spec = importlib.util.spec_from_file_location("rl_compare", ROOT / "bench" / "rl_compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", ARMS_FILES, ids=lambda p: p.name)
def test_every_shipped_arm_is_a_valid_run(path, tmp_path):
    rl_compare = _rl_compare()
    for arm, spec in rl_compare.read_arms(path).items():
        cfg = rl_compare.arm_config("tiny", None, tmp_path, arm, spec, seed=1)
        assert cfg.rl.method == spec["method"] and cfg.rl.seed == 1 and cfg.rl.baselines == []
        for key, value in spec.get("rl", {}).items():
            assert getattr(cfg.rl, key) == value, (arm, key)


def test_a_bad_arm_is_refused_before_anything_trains(tmp_path):
    arms = tmp_path / "arms.yaml"
    arms.write_text("dgpo: {method: dgpo}\nbad: {method: dgpo, rl: {kl_onn: all}}\n")
    run = RunDir(tmp_path / "prepared")
    run.stages.mkdir(parents=True)  # looks prepared, so only the arm can fail
    run.marker("cold-start").write_text("{}")
    run.config.write_text('{"preset": "tiny"}')
    work = tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "bench" / "rl_compare.py"), "--run", str(run.root), "--arms-file", str(arms), "--work", str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "kl_onn" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not work.exists()


def test_an_unprepared_run_is_named_with_the_fix(tmp_path):
    with pytest.raises(DGPOError, match="--stop-after cold-start"):
        _rl_compare().prepared_preset(tmp_path / "missing")


def test_arms_of_a_file_are_picked_by_name():
    rl_compare = _rl_compare()
    path = ROOT / "bench" / "arms" / "kl_on.yaml"
    assert list(rl_compare.select_arms(path, ["dgpo-kl-all"])) == ["dgpo-kl-all"]
    assert list(rl_compare.select_arms(path, None)) == list(rl_compare.read_arms(path))
    assert list(rl_compare.select_arms(None, ["ppo"])) == ["ppo"]
    with pytest.raises(DGPOError, match="no arm dgpo-kl-al in"):
        rl_compare.select_arms(path, ["dgpo-kl-al"])
