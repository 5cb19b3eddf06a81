"""Offline vLLM generation (GPU only): the fast backend for evaluation and RL rollouts.

Contexts go in as token ids and the engine's sampled ids and log-probs come back untouched, so what
training sees is exactly what was sampled. vLLM is an optional extra and is imported only here.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from dgpo_agent.backends import TokenPolicy
from dgpo_agent.backends.base import Completion, SamplingParams
from dgpo_agent.errors import DGPOError


def sampling_kwargs(params: SamplingParams) -> dict[str, Any]:
    """vLLM ``SamplingParams`` fields for our settings (also what a vLLM server accepts per request).

    Greedy is temperature 0. The stop string stays in the text, special tokens (protocol tags may be
    special) are kept, and ``logprobs=0`` returns the sampled token's log-prob only.
    """
    return {
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": 1.0 if params.greedy else params.top_p,
        "max_tokens": params.max_new_tokens,
        "stop": list(params.stop),
        "include_stop_str_in_output": True,
        "seed": params.seed,
        "logprobs": 0,
        "skip_special_tokens": False,
    }


def require_vllm() -> None:
    """Fail with an install hint, before any vLLM import, when the extra is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise DGPOError("vLLM is not installed: pip install 'dgpo-agent[vllm]' (needs a CUDA GPU)")


class VLLMPolicy(TokenPolicy):
    """A ``vllm.LLM`` engine. ``engine_kwargs`` go to ``vllm.LLM`` (dtype, gpu_memory_utilization, ...)."""

    def __init__(self, model: str, tokenizer: str | None = None, **engine_kwargs: Any) -> None:
        require_vllm()
        import vllm

        # Log-probs under the distribution actually sampled from (after temperature / top_p), as the
        # transformers backend reports them; vLLM's default is the raw model distribution.
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = vllm.LLM(model=model, tokenizer=tokenizer, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()

    def window(self) -> int | None:
        return self.llm.llm_engine.model_config.max_model_len

    def continue_rows(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Continue every id row in one ``LLM.generate`` call (outputs come back in prompt order)."""
        import vllm

        prompts = [{"prompt_token_ids": ids} for ids in rows]
        outputs = self.llm.generate(prompts, vllm.SamplingParams(**sampling_kwargs(params)), use_tqdm=False)
        return [_completion(out.outputs[0]) for out in outputs]


def _completion(output: Any) -> Completion:
    """A vLLM ``CompletionOutput`` as ours: the engine's ids and the sampled token's log-prob per step."""
    ids = list(output.token_ids)
    logprobs = [step[token].logprob for token, step in zip(ids, output.logprobs)]
    return Completion(text=output.text, token_ids=ids, logprobs=logprobs)
