"""How long `dgpo-agent --help` takes, against a bare Python start-up measured in the same run.

    python bench/cli_startup.py [--repeat 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def wall(cmd: list[str], repeat: int) -> float:
    """Median wall time of a command, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    bare = wall([sys.executable, "-c", "pass"], args.repeat)
    cli = wall([sys.executable, "-m", "dgpo_agent.cli", "--help"], args.repeat)
    print(json.dumps({"python_s": round(bare, 3), "help_s": round(cli, 3), "ratio": round(cli / bare, 1)}, indent=2))


if __name__ == "__main__":
    main()
