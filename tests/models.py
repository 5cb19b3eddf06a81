"""Tiny, offline model factories for tests: the world tokenizer trained in-process and a random Qwen2.

Both build in about a second, so tests never need a downloaded checkpoint. Results are cached per
process; callers that mutate a model should deep-copy it first.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from dgpo_agent import protocol

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

_CORPUS = [
    protocol.instructions("Who wrote the novel Moby Dick"),
    protocol.instructions("What is the capital of France"),
    "<think> I need to find the author of the novel. </think>\n<search> Moby Dick author </search>",
    protocol.information(
        [{"id": "1", "title": "Moby-Dick", "text": "Moby-Dick is an 1851 novel by Herman Melville.", "score": 1.0}]
    ),
    "<think> The author is Herman Melville. </think>\n<answer> Herman Melville </answer>",
    protocol.CORRECTIVE_OBSERVATION,
    "The quick brown fox jumps over the lazy dog. Paris is the capital and largest city of France.",
]


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(texts: tuple[str, ...], vocab_size: int) -> PreTrainedTokenizerFast:
    from dgpo_agent.training.tokenizer import train_tokenizer

    return train_tokenizer(texts, vocab_size=vocab_size)


def tiny_tokenizer(texts: list[str] | None = None, vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """The project's world tokenizer (protocol tags as single tokens, ChatML, EOS = pad), trained on a
    few protocol-shaped lines."""
    return _cached_tokenizer(tuple(texts or _CORPUS), vocab_size)


@functools.lru_cache(maxsize=4)
def _cached_qwen2(tokenizer: PreTrainedTokenizerFast, seed: int, hidden: int, layers: int) -> Qwen2ForCausalLM:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        # Large weights give well-separated logits, so batched and single greedy runs never flip a
        # near-tie on float noise.
        initializer_range=0.5,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).to(torch.float32).eval()


def tiny_qwen2(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden: int = 64, layers: int = 2
) -> Qwen2ForCausalLM:
    """A randomly initialised fp32 Qwen2 sized to ``tokenizer``, in eval mode (cached per arguments)."""
    return _cached_qwen2(tokenizer, seed, hidden, layers)
