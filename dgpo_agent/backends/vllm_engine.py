"""Offline vLLM generation (GPU only): the fast backend for evaluation and RL rollouts.

Contexts go in as token ids and the engine's sampled ids and log-probs come back untouched, so what
training sees is exactly what was sampled. vLLM is an optional extra and is imported only here.

**The RL trainer's rollout engine** (``rl.rollout_engine: vllm``): ``VLLMPolicy.colocated`` runs the
engine in the trainer's own process, on its GPU (vLLM's ``external_launcher`` executor, as TRL's
colocate mode), and ``load_weights`` copies the trainer's weights into vLLM's model in place before
the first rollout after each update. Written against the API of the vLLM versions the extra allows,
and tested on CPU against a stand-in for it (``tests/test_backends.py``); not yet run on a GPU.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
from typing import Any

from dgpo_agent.backends import TokenPolicy
from dgpo_agent.backends.base import Completion, SamplingParams, derived_seed
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


def row_sampling(params: SamplingParams, rows: int) -> list[SamplingParams]:
    """Each row's settings. vLLM seeds every request on its own, so one seed for the whole batch would
    give identical contexts (the rollouts of one question) identical samples: each row gets a seed
    derived from the call's, as the transformers backend's rows draw from one seeded stream."""
    if params.seed is None:
        return [params] * rows
    return [dataclasses.replace(params, seed=derived_seed(params.seed, row)) for row in range(rows)]


def require_vllm() -> None:
    """Fail with an install hint, before any vLLM import, when the extra is missing."""
    if importlib.util.find_spec("vllm") is None:
        raise DGPOError("vLLM is not installed: pip install 'dgpo-agent[vllm]' (needs a CUDA GPU)")


# The share of the GPU's memory a colocated engine takes by default (TRL's colocate default): the
# trainer's weights, gradients, optimizer state and activations need the rest.
COLOCATED_GPU_SHARE = 0.3


class VLLMPolicy(TokenPolicy):
    """A ``vllm.LLM`` engine. ``engine_kwargs`` go to ``vllm.LLM`` (dtype, gpu_memory_utilization, ...).

    A ``RolloutEngine``: ``weights_version`` starts at 0, so the RL trainer copies its weights in before
    the first rollout, whatever the checkpoint the engine loaded held."""

    def __init__(self, model: str, tokenizer: str | None = None, **engine_kwargs: Any) -> None:
        require_vllm()
        import vllm

        # Log-probs under the distribution actually sampled from (after temperature / top_p), as the
        # transformers backend reports them; vLLM's default is the raw model distribution.
        engine_kwargs.setdefault("logprobs_mode", "processed_logprobs")
        self.llm = vllm.LLM(model=model, tokenizer=tokenizer, **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.weights_version = 0

    @classmethod
    def colocated(
        cls,
        model: str,
        *,
        rank: int,
        local_rank: int,
        world_size: int,
        gpu_memory_utilization: float | None = None,
        tokenizer: Any | None = None,
        **engine_kwargs: Any,
    ) -> VLLMPolicy:
        """An engine for the RL trainer of process ``rank``, in that process and on its GPU.

        ``external_launcher`` keeps vLLM's executor in this process (so ``load_weights`` reaches the
        model without serialising it) and places it by the launcher's ``RANK`` / ``LOCAL_RANK`` /
        ``WORLD_SIZE``, set here when no launcher did (a plain ``python`` run). ``tokenizer`` (an
        object) encodes the environment's text, so it is tokenised as the trainer's own tokenizer
        would, as with the transformers engine.
        """
        for name, value in (("RANK", rank), ("LOCAL_RANK", local_rank), ("WORLD_SIZE", world_size)):
            os.environ.setdefault(name, str(value))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        share = COLOCATED_GPU_SHARE if gpu_memory_utilization is None else gpu_memory_utilization
        policy = cls(model, distributed_executor_backend="external_launcher", gpu_memory_utilization=share, **engine_kwargs)
        if tokenizer is not None:
            policy.tokenizer = tokenizer
        return policy

    def window(self) -> int | None:
        return self.llm.llm_engine.model_config.max_model_len

    def load_weights(self, model: Any, version: int) -> None:
        """Generate with ``model``'s weights (a Hugging Face model) from now on: its parameters are
        copied into vLLM's model in place (its own ``load_weights`` maps the Hugging Face names and
        casts to the engine's dtype), then the prefix cache is dropped, since its keys and values
        came from the old weights."""
        weights = [(name, param.detach()) for name, param in model.named_parameters()]
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.llm.reset_prefix_cache()
        self.weights_version = version

    def continue_rows(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Continue every id row in one ``LLM.generate`` call (outputs come back in prompt order)."""
        import vllm

        prompts = [{"prompt_token_ids": ids} for ids in rows]
        sampling = [vllm.SamplingParams(**sampling_kwargs(p)) for p in row_sampling(params, len(rows))]
        outputs = self.llm.generate(prompts, sampling, use_tqdm=False)
        return [_completion(out.outputs[0]) for out in outputs]


def _completion(output: Any) -> Completion:
    """A vLLM ``CompletionOutput`` as ours: the engine's ids and the sampled token's log-prob per step."""
    ids = list(output.token_ids)
    logprobs = [step[token].logprob for token, step in zip(ids, output.logprobs)]
    return Completion(text=output.text, token_ids=ids, logprobs=logprobs)


def _free_port() -> int:
    """A TCP port free on this machine now, for the rendezvous of a process that launched itself."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
