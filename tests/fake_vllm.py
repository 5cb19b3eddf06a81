"""A stand-in for the ``vllm`` package, where vLLM cannot run (it needs a CUDA GPU).

It holds only what ``backends.vllm_engine`` uses of vLLM's API, as the versions the extra allows
spell it: ``LLM(model, tokenizer, **engine_kwargs)`` with ``generate(prompts, sampling_params,
use_tqdm)``, ``get_tokenizer()``, ``llm_engine.model_config.max_model_len``, ``apply_model(fn)`` and
``reset_prefix_cache()``; ``SamplingParams(**fields)``; outputs whose ``logprobs`` map each sampled
id to an object with a ``logprob``; and a model whose ``load_weights`` takes (Hugging Face name,
tensor) pairs and copies them in place. As in vLLM, every request is seeded on its own: two
requests with the same context and seed draw the same sample.
"""

from __future__ import annotations

import importlib.machinery
import os
import types
from types import SimpleNamespace
from typing import Any, Iterable

import torch

from dgpo_agent.backends.base import SamplingParams
from dgpo_agent.backends.transformers import TransformersPolicy

RENDEZVOUS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class EngineModel:
    """vLLM's side of the model: it takes weights by their Hugging Face names, in place."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        params = dict(self.model.named_parameters())
        loaded = set()
        with torch.no_grad():
            for name, tensor in weights:
                params[name].copy_(tensor)
                loaded.add(name)
        return loaded


class LLM:
    """Generates with a transformers model of its own, loaded from the checkpoint ``model`` names."""

    built: list[LLM] = []

    def __init__(self, model: str, tokenizer: str | None = None, **engine_kwargs: Any) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.engine_kwargs = engine_kwargs
        self.rendezvous = {name: os.environ.get(name) for name in RENDEZVOUS}
        hf = AutoModelForCausalLM.from_pretrained(model)
        self.policy = TransformersPolicy(hf, AutoTokenizer.from_pretrained(tokenizer or model), prefix_caching=False)
        self.model = EngineModel(hf)
        self.llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=hf.config.max_position_embeddings))
        self.requests: list[list[Any]] = []
        self.prefix_resets = 0
        LLM.built.append(self)

    def get_tokenizer(self) -> Any:
        return self.policy.tokenizer

    def apply_model(self, fn: Any) -> list[Any]:
        return [fn(self.model)]

    def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
        self.prefix_resets += 1
        return True

    def generate(self, prompts: list[dict], sampling_params: Any, use_tqdm: bool = True) -> list[Any]:
        requests = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        self.requests.append(requests)
        return [self._one(prompt["prompt_token_ids"], params) for prompt, params in zip(prompts, requests, strict=True)]

    def _one(self, ids: list[int], params: Any) -> Any:
        ours = SamplingParams(temperature=params.temperature, top_p=params.top_p, max_new_tokens=params.max_tokens, stop=tuple(params.stop), seed=params.seed)
        done = self.policy.continue_rows([ids], ours)[0]
        logprobs = [{token: SimpleNamespace(logprob=lp)} for token, lp in zip(done.token_ids, done.logprobs)]
        return SimpleNamespace(outputs=[SimpleNamespace(text=done.text, token_ids=done.token_ids, logprobs=logprobs)])


class FakeSamplingParams(SimpleNamespace):
    """vLLM's ``SamplingParams``: the fields it is built with."""


def module() -> types.ModuleType:
    """The stand-in as an importable module (``importlib.util.find_spec`` finds it in ``sys.modules``)."""
    fake = types.ModuleType("vllm")
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    fake.LLM, fake.SamplingParams = LLM, FakeSamplingParams
    return fake
