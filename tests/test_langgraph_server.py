"""The graph under the LangGraph Agent Server (`langgraph dev`), driven by the real `langgraph_sdk` client."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    shutil.which("langgraph", path=str(Path(sys.executable).parent)) is None,
    reason="langgraph-cli is not installed (pip install -e '.[langgraph-server]')",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(small_store, small_world, tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DGPO_MODEL": "oracle",
        "DGPO_STORE": str(small_world / "chroma"),
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGGRAPH_NO_VERSION_CHECK": "true",
    }
    cli = str(Path(sys.executable).parent / "langgraph")
    args = [cli, "dev", "--no-browser", "--no-reload", "--host", "127.0.0.1", "--port", str(port)]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url + "/ok", timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.5)
        else:
            pytest.fail("langgraph dev did not start:\n" + (tmp_path / "server.log").read_text())
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_langgraph_sdk_streams_a_run(server, small_world):
    from langgraph_sdk import get_sync_client

    record = next(r for r in map(json.loads, (small_world / "test.jsonl").open()) if r["hops"] == 2)
    client = get_sync_client(url=server)
    chunks = list(client.runs.stream(None, "agent", input={"question": record["question"]}, stream_mode="updates"))
    updates = [c.data for c in chunks if c.event == "updates"]
    nodes = [next(iter(u)) for u in updates]
    assert nodes[0] == "think" and nodes[-1] == "answer" and "search" in nodes
    answer_steps = [s for u in updates for s in u[next(iter(u))].get("steps", []) if s["kind"] == "answer"]
    assert answer_steps[0]["answer"] in record["golden_answers"]
