"""Batched decoding that drops rows from the batch as they finish.

``model.generate`` decodes until the batch's longest row stops: finished rows keep decoding padding,
so every agent turn costs as many full-batch steps as its straggler (bench/README.md, rl_overhead).
This loop evicts finished rows from the
batch, the attention mask and the KV cache (as vLLM's continuous batching retires sequences), and
stops as soon as none is left. Eviction waits until a quarter of the rows have finished, so a large
cache is copied a few times per turn, not once per row.

Decoding matches ``model.generate`` with the backend's explicit settings: the same position ids
(cumulative sum of the attention mask, so the prefix cache's left-padding holes are skipped), the
same logits warpers (temperature, then top-p), greedy argmax or one draw per row from the warped
distribution (by inverse CDF, see ``_draw``), and the same stop-string criterion over the whole
sequence.

Imported only by the transformers backend (it imports transformers at module level).
"""

from __future__ import annotations

import copy
import functools
import inspect
from typing import Any

import torch
from transformers import LogitsProcessorList, StopStringCriteria, TemperatureLogitsWarper, TopPLogitsWarper

from dgpo_agent.backends.base import SamplingParams

EVICT_FRACTION = 0.25


def decode(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any,
    params: SamplingParams,
    eos_ids: set[int],
    tokenizer: Any,
) -> tuple[list[list[int]], list[list[float]]]:
    """Continue every row of the left-padded batch; ``cache`` may already hold a prefix of it. Returns
    each row's sampled ids (up to and including its EOS or stop-string token) and their log-probs
    under the sampling distribution (the raw logits when greedy). ``cache`` itself is never shrunk:
    it ends holding every row's context plus the tokens decoded before the first eviction."""
    batch = input_ids.shape[0]
    ids: list[list[int]] = [[] for _ in range(batch)]
    logprobs: list[list[float]] = [[] for _ in range(batch)]
    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    past = cache.get_seq_length()
    logits = _forward(model, input_ids[:, past:], attention_mask, positions[:, past:], cache)
    warp = _warpers(params)
    stop = StopStringCriteria(tokenizer, list(params.stop)) if params.stop else None
    eos = torch.tensor(sorted(eos_ids), device=input_ids.device)
    rows = torch.arange(batch, device=input_ids.device)  # the original row of each batch row
    running = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    sequences, next_position = input_ids, positions[:, -1] + 1
    for step in range(params.max_new_tokens):
        token, token_logprob = _sample(logits, warp, sequences)
        for row, t, lp in zip(rows[running].tolist(), token[running].tolist(), token_logprob[running].tolist()):
            ids[row].append(t)
            logprobs[row].append(lp)
        sequences = torch.cat([sequences, token[:, None]], dim=1)
        finished = torch.isin(token, eos)
        if stop is not None:
            finished |= stop(sequences, None)
        running &= ~finished
        if not running.any() or step == params.max_new_tokens - 1:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
        if (~running).sum() >= max(1, EVICT_FRACTION * running.numel()):
            keep = running.nonzero().squeeze(1)
            cache = _select(cache, keep, fork=rows.numel() == batch)
            rows, sequences, attention_mask = rows[keep], sequences[keep], attention_mask[keep]
            token, next_position, running = token[keep], next_position[keep], running[keep]
        logits = _forward(model, token[:, None], attention_mask, next_position[:, None], cache)
        next_position = next_position + 1
    return ids, logprobs


def _forward(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor, cache: Any) -> torch.Tensor:
    """The last position's logits, with the cache extended by ``input_ids``."""
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
        use_cache=True, logits_to_keep=1, **{_cache_kwarg(type(model)): cache},
    )
    return out.logits[:, -1, :].float()


@functools.cache
def _cache_kwarg(model_class: type) -> str:
    """transformers 5.x renamed ``past_key_values`` to ``cache`` (the old name warns until 5.40)."""
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def _warpers(params: SamplingParams) -> LogitsProcessorList | None:
    if params.greedy:
        return None
    warpers = LogitsProcessorList([TemperatureLogitsWarper(params.temperature)])
    if params.top_p < 1.0:
        warpers.append(TopPLogitsWarper(params.top_p))
    return warpers


def _sample(logits: torch.Tensor, warp: LogitsProcessorList | None, sequences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, its log-prob) per row: argmax of the raw logits, or one draw from the warped ones."""
    if warp is None:
        token = logits.argmax(-1)
        scores = logits
    else:
        scores = warp(sequences, logits)
        token = _draw(torch.softmax(scores, dim=-1))
    return token, torch.log_softmax(scores, dim=-1).gather(1, token[:, None]).squeeze(1)


def _draw(probs: torch.Tensor) -> torch.Tensor:
    """One token per row by inverting the cumulative distribution with one uniform number per row.
    ``torch.multinomial`` draws a random number per vocabulary entry, which on CPU cost more than the
    rest of the sampling step (bench/README.md, rl_overhead). Float64 keeps the sums
    exact enough for a 150k vocabulary; zero-probability tokens (cut by top-p) are never drawn."""
    cdf = probs.double().cumsum(dim=-1)
    u = torch.rand((probs.shape[0], 1), dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(1)


def _select(cache: Any, keep: torch.Tensor, fork: bool) -> Any:
    """The cache restricted to the ``keep`` rows. The first eviction of a call works on a shallow copy
    (layers copied, tensors shared until replaced), so the caller's cache keeps every row's context."""
    if fork:
        cache = copy.copy(cache)
        cache.layers = [copy.copy(layer) for layer in cache.layers]
    cache.batch_select_indices(keep)
    return cache
