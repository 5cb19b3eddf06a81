"""The tiny model zoo: Qwen2 shapes for the teacher and the student, built fresh for a tokenizer.

The shapes are the tiny-world notes' (h256 x 4 and h128 x 3, MLP 4x hidden, no grouped-query
attention), so their measurements carry over: with the 4,096-token world tokenizer the teacher has
5.25M parameters and the student 1.31M, which trains about 3x faster per token on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import Qwen2ForCausalLM


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only Qwen2 model; the vocabulary comes from the tokenizer."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int = 2048
    tie_embeddings: bool = True


TEACHER = ModelSpec(hidden=256, layers=4, heads=4, kv_heads=4, intermediate=1024)
STUDENT = ModelSpec(hidden=128, layers=3, heads=4, kv_heads=4, intermediate=512)
SPECS = {"teacher": TEACHER, "student": STUDENT}


def build_model(spec: ModelSpec, tokenizer: Any, seed: int = 0) -> Qwen2ForCausalLM:
    """A randomly initialised fp32 ``Qwen2ForCausalLM`` for ``tokenizer``, reproducible from ``seed``.

    The global torch RNG is left as it was.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        intermediate_size=spec.intermediate,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=spec.tie_embeddings,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Qwen2ForCausalLM(config).to(torch.float32)


def count_params(model: torch.nn.Module) -> int:
    """Trainable parameters, tied embeddings counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
