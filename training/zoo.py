"""The tiny model zoo: Qwen2 shapes for the teacher and the student, built fresh for a tokenizer; and
a smaller student cut from a pretrained checkpoint (``keep_layers``).

The student is h128 x 3, the size that learned to copy unseen names in the feasibility study
(docs/tiny-world.md). The teacher is h192 x 4, about twice the student: optimiser steps matter more
than width for copying, and a narrower teacher gets more of them in the same preparation time. MLPs
are 4x hidden, with no grouped-query attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dgpo_agent.training.data import stop_id

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


TEACHER = ModelSpec(hidden=192, layers=4, heads=4, kv_heads=4, intermediate=768)
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
        model = Qwen2ForCausalLM(config).to(torch.float32)
    # Chat-tuned models end their turn with <|im_end|>, as Qwen2.5's generation config lists it.
    model.generation_config.eos_token_id = sorted({tokenizer.eos_token_id, stop_id(tokenizer)})
    return model


def count_params(model: torch.nn.Module) -> int:
    """Trainable parameters, tied embeddings counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def keep_layers(model: torch.nn.Module, count: int) -> list[int]:
    """Cut a decoder-only model (Llama, Qwen2, Mistral ... : ``model.model.layers``) to ``count`` of its
    layers, evenly spaced with the first and the last kept, in place; returns the kept indices. The
    embeddings and the vocabulary stay, so the cut model can be distilled from the full one."""
    import torch

    from dgpo_agent.errors import DGPOError

    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise DGPOError(f"cannot cut {type(model).__name__}: base.student_layers needs a decoder with model.layers (Llama, Qwen2, Mistral)")
    total = len(layers)
    if not 1 <= count <= total:
        raise DGPOError(f"base.student_layers={count}, but the model has {total} layers: choose 1 to {total}")
    kept = [0] if count == 1 else sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})
    model.model.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = count
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    return kept
