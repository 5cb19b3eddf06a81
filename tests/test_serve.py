"""Serving a checkpoint: the save → from_pretrained round trip, the CPU completions server (in-process
and through `dgpo-agent serve`), and the choice between vLLM and transformers."""

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dgpo_agent.agent import AGENT_FILE, CompactSearchAgent, save_checkpoint
from dgpo_agent.protocol import PROTOCOL_VERSION
from dgpo_agent.backends.base import Context, SamplingParams
from dgpo_agent.backends.transformers import TransformersPolicy
from dgpo_agent.errors import DGPOError
from dgpo_agent.serving.completions_server import use_vllm, vllm_command
from tests.models import tiny_qwen2, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def questions(small_world):
    return [json.loads(line)["question"] for line in (small_world / "dev.jsonl").read_text().splitlines()][:3]


@pytest.fixture(scope="module")
def checkpoint(small_store, small_world, tmp_path_factory):
    """The tiny random Qwen2 saved as training saves its final model."""
    tok = tiny_tokenizer()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"), tiny_qwen2(tok), tok, small_world / "chroma")


def test_checkpoint_round_trip_gives_the_same_greedy_answers(checkpoint, small_world, questions):
    tok = tiny_tokenizer()
    store = small_world / "chroma"
    trained = CompactSearchAgent(TransformersPolicy(tiny_qwen2(tok), tok), store, max_new_tokens=24)
    loaded = CompactSearchAgent.from_pretrained(checkpoint, max_new_tokens=24)

    assert json.loads((checkpoint / AGENT_FILE).read_text()) == {
        "store": str(store.resolve()), "collection": "dgpo", "embedder": None, "max_turns": 4, "top_k": 3, "observations": "inline",
        "examples": 0, "protocol": PROTOCOL_VERSION,
    }
    assert isinstance(loaded.policy, TransformersPolicy)
    before, after = [trained.invoke(q) for q in questions], [loaded.invoke(q) for q in questions]
    assert after == before
    assert all(len(out["steps"]) > 0 for out in after)
    assert loaded.batch(questions) == before  # the batched runner agrees too


def test_a_checkpoint_is_served_with_the_observations_it_was_recorded_with(checkpoint, tmp_path):
    """A model is served as it was trained: a record made for user-turn observations loads with them,
    and an argument still overrides the record."""
    import shutil

    user = shutil.copytree(checkpoint, tmp_path / "user")
    record = json.loads((user / AGENT_FILE).read_text())
    (user / AGENT_FILE).write_text(json.dumps({**record, "observations": "user"}))
    assert CompactSearchAgent.from_pretrained(user).config.format.observations == "user"
    assert CompactSearchAgent.from_pretrained(user, observations="inline").config.format.observations == "inline"
    assert CompactSearchAgent.from_pretrained(checkpoint).config.format.observations == "inline"


# ----------------------------------------------------------------------------------------- CPU server


@pytest.fixture(scope="module")
def server(checkpoint):
    """The completions app over the checkpoint, served by uvicorn in a thread on a free port."""
    import uvicorn
    from dgpo_agent.serving.completions_server import build_app

    policy = TransformersPolicy.from_pretrained(str(checkpoint))
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(build_app(policy, str(checkpoint)), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", policy
    srv.should_exit = True
    thread.join(timeout=10)


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url + "/v1/completions", json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_completions_match_local_generation_and_follow_openai_stop_rules(server, checkpoint):
    url, policy = server
    models = json.loads(urllib.request.urlopen(url + "/v1/models").read())
    assert [m["id"] for m in models["data"]] == [str(checkpoint)]

    prompts = [policy.prompt("Who founded Kreaxse Labs")["text"], "<think> The founder is"]
    stop = ["</search>", "</answer>"]
    status, reply = post(url, {"model": str(checkpoint), "prompt": prompts, "max_tokens": 12, "temperature": 0, "stop": stop})
    assert status == 200 and reply["object"] == "text_completion"
    contexts = [Context("", [{"role": "prompt", "text": p, "ids": None}]) for p in prompts]
    local = policy.generate(contexts, SamplingParams(max_new_tokens=12))
    for choice, out in zip(reply["choices"], local):
        fired = choice["stop_reason"]
        assert choice["finish_reason"] == ("stop" if fired or len(out.token_ids) < 12 else "length")
        assert choice["text"] == (out.text[: out.text.index(fired)] if fired else out.text)  # stop string dropped
    assert reply["usage"]["completion_tokens"] == sum(len(o.token_ids) for o in local)

    # vLLM's include_stop_str_in_output keeps it; a stop that fires at once gives empty text.
    first = local[0].text[:1]
    body = {"prompt": prompts[0], "max_tokens": 5, "temperature": 0, "stop": [first], "include_stop_str_in_output": True}
    status, reply = post(url, body)
    assert status == 200 and reply["choices"][0] == {"index": 0, "text": first, "logprobs": None, "stop_reason": first, "finish_reason": "stop"}


def post_raw(url: str, body: str) -> tuple[int, dict]:
    """A request body as written, so NaN and Infinity (which Python's json accepts) reach the server."""
    request = urllib.request.Request(url + "/v1/completions", body.encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(
    "field, body",
    [
        ("n", '{"prompt": "x", "n": 2}'),
        ("prompt", '{"prompt": [1, 2, 3]}'),
        ("prompt", '{"prompt": ""}'),
        ("prompt", '{"prompt": []}'),
        ("temperature", '{"prompt": "x", "temperature": -1}'),
        ("temperature", '{"prompt": "x", "temperature": NaN}'),
        ("temperature", '{"prompt": "x", "temperature": Infinity}'),
        ("top_p", '{"prompt": "x", "top_p": -1}'),
        ("top_p", '{"prompt": "x", "top_p": 5}'),
        ("seed", '{"prompt": "x", "seed": 1180591620717411303424}'),
        ("max_tokens", '{"prompt": "x", "max_tokens": 0}'),
    ],
)
def test_every_invalid_field_is_a_400_that_names_it(server, field, body):
    """As OpenAI and vLLM validate: never a bare 500, and never a silent 200 for a value the server would
    reinterpret (a negative temperature used to decode greedily)."""
    status, reply = post_raw(server[0], body)
    assert status == 400 and reply["message"].startswith(field), reply


def test_a_request_for_another_model_is_a_404(server):
    assert post(server[0], {"model": "other", "prompt": "x"})[0] == 404


def test_agent_connects_by_url(server, checkpoint, small_world, questions):
    url, policy = server
    remote = CompactSearchAgent(url, small_world / "chroma", max_new_tokens=24)
    local = CompactSearchAgent(policy, small_world / "chroma", max_new_tokens=24)
    # The served model is named by its path, so the client renders the prompt with its chat template.
    assert remote.policy.prompt(questions[0])["text"] == local.policy.prompt(questions[0])["text"]
    for question in questions:
        over_http, in_process = remote.invoke(question), local.invoke(question)
        # The first turn continues the same prompt ids; later turns re-tokenise text, so compare the first.
        assert over_http["steps"][0] == in_process["steps"][0]
        assert over_http["transcript"].startswith(local.policy.prompt(question)["text"])


# ----------------------------------------------------------------------------------------- the command


def test_dgpo_agent_serve_on_cpu(checkpoint, small_world, questions, tmp_path):
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "dgpo_agent.cli", "serve", str(checkpoint), "--port", str(port), "--backend", "transformers"]
    log = (tmp_path / "serve.log").open("w+")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except OSError:
                assert time.time() < deadline, Path(log.name).read_text()
                time.sleep(0.5)
        out = CompactSearchAgent(f"http://127.0.0.1:{port}", small_world / "chroma", max_new_tokens=16).invoke(questions[0])
        assert out["steps"] and out["question"] == questions[0]
        store = (small_world / "chroma").resolve()
        connect = f"connect with CompactSearchAgent('http://127.0.0.1:{port}', store='{store}', collection='dgpo', max_turns=4, top_k=3, observations='inline', examples=0)"
        assert connect in Path(log.name).read_text()  # the agent the checkpoint was trained as
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize("model", ["oracle", "http://127.0.0.1:8000"])
def test_serve_refuses_what_is_not_a_model(model):
    result = subprocess.run([sys.executable, "-m", "dgpo_agent.cli", "serve", model], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: cannot serve {model!r}: pass a checkpoint directory or a Hugging Face model name"
    ]


def test_backend_choice_and_vllm_command(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    assert use_vllm("transformers") is False
    assert use_vllm("auto") is False  # no vLLM here: the transformers server
    with pytest.raises(DGPOError, match=r"vLLM is not installed: pip install 'dgpo-agent\[vllm\]'"):
        use_vllm("vllm")
    with pytest.raises(DGPOError, match="unknown backend 'tgi'"):
        use_vllm("tgi")
    assert vllm_command("/ckpt", "0.0.0.0", 9000, ["--max-model-len", "4096"]) == [
        "vllm", "serve", "/ckpt", "--host", "0.0.0.0", "--port", "9000", "--generation-config", "vllm",
        "--max-model-len", "4096",
    ]  # fmt: skip
