"""Local generation with Hugging Face transformers: the CPU backend, and the reference for the others.

Every context is continued as raw token ids (the same assistant turn, never a new chat message), in one
left-padded batch. The completion keeps exactly the ids the model sampled and their log-probs.

**Prefix caching.** An agent's next turn continues the context of its last one. The policy keeps the
KV cache of its last call, and a call whose contexts each extend one of that call's contexts (same
token ids, same order, a subset: finished trajectories drop out) encodes only the new tokens (the
model's last turn and the retrieved documents) instead of the whole context again, as vLLM's
automatic prefix caching does. Anything else, or weights changed in place since (an optimizer step),
starts from an empty cache; results are the same either way up to float rounding. The cache grows in
place (``kv_cache.GrowingCache``) instead of being concatenated at every decoding step, and rows
leave the batch as they finish (``decode``) instead of decoding padding until the longest one stops.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from dgpo_agent.backends import TokenPolicy
from dgpo_agent.backends.base import Completion, SamplingParams
from dgpo_agent.errors import DGPOError

if TYPE_CHECKING:
    import torch


@dataclass
class _Prefix:
    """What the last call left in the cache: each row's context ids, and the padded batch they form."""

    rows: list[list[int]]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    cache: Any
    weights_version: int


class TransformersPolicy(TokenPolicy):
    """A causal LM and its tokenizer, decoding with ``decode.decode`` (finished rows leave the batch);
    ``prefix_caching`` reuses the last call's KV cache for contexts that continue it (see the module
    docstring)."""

    def __init__(self, model: Any, tokenizer: Any, prefix_caching: bool = True) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = model.device
        self.eos_ids = _eos_ids(model.generation_config, tokenizer)
        self.pad_id = pad_id(tokenizer)
        self.prefix_caching = prefix_caching
        self.weights_version = 0  # a RolloutEngine: the trainer's version of the weights last loaded
        self._prefix: _Prefix | None = None
        self._lock = threading.Lock()  # one generation at a time: calls share the cache

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str,
        device: str | None = None,
        dtype: str | torch.dtype | None = None,
        tokenizer: str | None = None,
    ) -> TransformersPolicy:
        """Load a checkpoint directory or a Hugging Face model name (``tokenizer`` defaults to the same)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from safetensors import SafetensorError

        try:
            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        except RuntimeError:
            raise DGPOError(f"unknown device {device!r}: use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DGPOError(f"device {device} asked for, but no CUDA device is visible: use cpu")
        dtype = _resolve_dtype(dtype, device)
        try:
            tok = AutoTokenizer.from_pretrained(tokenizer or path_or_name)
            model = AutoModelForCausalLM.from_pretrained(path_or_name, dtype=dtype)
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            if Path(path_or_name).exists():
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                raise DGPOError(f"cannot load model from '{path_or_name}': {first}: re-save or re-download the checkpoint") from None
            raise DGPOError(
                f"model '{path_or_name}' not found: pass a checkpoint directory, a Hugging Face model name, "
                "or a server URL"
            ) from None
        rows = model.get_input_embeddings().num_embeddings
        if len(tok) > rows:
            raise DGPOError(
                f"the tokenizer of '{tokenizer or path_or_name}' has {len(tok)} tokens but the model only {rows} embeddings: "
                "pass the tokenizer the model was trained with"
            )
        return cls(model.to(device).eval(), tok)

    def window(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)

    def load_weights(self, model: Any, version: int) -> None:
        """Generate with ``model``'s weights from now on: nothing to copy when it is this policy's own
        model (RL on one device), else copied into this one, cast to its dtype and device. The copy
        changes the parameters in place, so no cached prefix outlives it."""
        import torch

        if model is not self.model:
            with torch.no_grad():
                self.model.load_state_dict(model.state_dict())
        self.weights_version = version

    def continue_rows(self, rows: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Continue every id row in one batch."""
        import torch

        from dgpo_agent.backends.decode import decode

        with self._lock, torch.no_grad(), _seeded(params.seed, self.device):
            input_ids, attention_mask, cache = self._inputs(rows)
            ids, logprobs = decode(self.model, input_ids, attention_mask, cache, params, self.eos_ids, self.tokenizer)
            if self.prefix_caching:
                self._remember(rows, input_ids, attention_mask, cache)
        return [self._completion(row, lps, params.stop) for row, lps in zip(ids, logprobs)]

    def _inputs(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The padded batch to continue and the cache that already holds its prefix (or an empty one).

        Continued rows keep their cached positions; their new tokens are left-padded after them, so
        the attention mask has holes, which position ids (its cumulative sum) and attention both skip.
        """
        import torch

        prefix, self._prefix = self._prefix, None  # never kept across a call: a failed one leaves no stale cache
        picks = None
        if prefix is not None and prefix.weights_version == self._weights_version():
            picks = continued_rows(prefix.rows, rows)
        if picks is None:
            input_ids, attention_mask = _left_pad(rows, self.pad_id, self.device)
            return input_ids, attention_mask, _empty_cache(self.model)
        index = torch.tensor(picks, device=self.device)
        prefix.cache.batch_select_indices(index)
        new_ids, new_mask = _left_pad([row[len(prefix.rows[j]) :] for row, j in zip(rows, picks)], self.pad_id, self.device)
        input_ids = torch.cat([prefix.input_ids[index], new_ids], dim=1)
        attention_mask = torch.cat([prefix.attention_mask[index], new_mask], dim=1)
        return input_ids, attention_mask, prefix.cache

    def _remember(self, rows: list[list[int]], input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any) -> None:
        """Keep the cache of the contexts only: the tokens decoded into it before the first eviction
        are dropped (rows that had finished went on decoding until then, and a row's kept completion
        is re-encoded with its next context)."""
        extra = cache.get_seq_length() - input_ids.shape[1]
        if extra > 0:
            cache.crop(-extra)
        self._prefix = _Prefix(rows, input_ids, attention_mask, cache, self._weights_version())

    def _weights_version(self) -> int:
        """Changes whenever a parameter is modified in place (an optimizer step), so a cache computed
        with older weights is never reused."""
        return sum(p._version for p in self.model.parameters())

    def _completion(self, ids: list[int], logprobs: list[float], stop: Sequence[str]) -> Completion:
        keep = kept_length(ids, self.eos_ids, stop, self._decode)
        ids = ids[:keep]
        body = ids[:-1] if ids and ids[-1] in self.eos_ids else ids
        return Completion(text=self._decode(body), token_ids=ids, logprobs=logprobs[:keep])

    def _decode(self, ids: list[int]) -> str:
        # Protocol tags can be special tokens, so special tokens stay; EOS is removed by the caller.
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def kept_length(ids: list[int], eos_ids: set[int], stop: Sequence[str], decode: Callable[[list[int]], str]) -> int:
    """How many generated ids belong to the completion: up to the first stop string, or to the first EOS
    (inclusive). ``decode`` already ends each row at the token that completes either; this is the
    check on the text (a stop string can end inside a token) and guards any ids past the end.
    """
    eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    body = len(ids) if eos_at is None else eos_at

    def has_stop(n: int) -> bool:
        return any(s in decode(ids[:n]) for s in stop)

    if not has_stop(body):
        return body if eos_at is None else eos_at + 1
    lo, hi = 1, body  # the shortest prefix that contains a stop string
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if has_stop(mid) else (mid + 1, hi)
    return lo


def continued_rows(previous: list[list[int]], rows: list[list[int]]) -> list[int] | None:
    """For each row, the index of the previous row it extends by at least one token, in order; None if
    some row extends none. The batched runner keeps its unfinished trajectories in order, so one pass
    matches them."""
    picks, j = [], 0
    for row in rows:
        while j < len(previous) and not (len(previous[j]) < len(row) and row[: len(previous[j])] == previous[j]):
            j += 1
        if j == len(previous):
            return None
        picks.append(j)
        j += 1
    return picks


def pad_id(tokenizer: Any) -> int:
    """The id that pads a batch: the tokenizer's pad token, else its EOS."""
    pad = tokenizer.pad_token_id
    return pad if pad is not None else tokenizer.eos_token_id


def _empty_cache(model: Any) -> Any:
    """A cache that grows in place; models with sliding-window layers keep transformers' own."""
    from transformers import DynamicCache

    if getattr(model.config, "sliding_window", None) and getattr(model.config, "use_sliding_window", True):
        return DynamicCache(config=model.config)
    from dgpo_agent.backends.kv_cache import GrowingCache

    return GrowingCache()


def _eos_ids(*sources: Any) -> set[int]:
    """Every end-of-sequence id a generation config or tokenizer names (an int or a list)."""
    found: set[int] = set()
    for source in sources:
        value = getattr(source, "eos_token_id", None)
        found.update([value] if isinstance(value, int) else value or [])
    return found


def _resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 on CPU (no fast bf16 on AVX2), unless the caller names one."""
    import torch

    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise DGPOError(f"unknown dtype '{dtype}': use float32, bfloat16 or float16")
    return resolved


def _left_pad(rows: list[list[int]], pad_id: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding keeps every row's last token at the end, where generation continues."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    return ids, mask


@contextlib.contextmanager
def _seeded(seed: int | None, device: Any) -> Iterator[None]:
    """Seed sampling without disturbing the caller's global RNG state."""
    import torch

    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
