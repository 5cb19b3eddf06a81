"""A transformers ``DynamicCache`` that grows in place.

``DynamicCache`` concatenates every decoding step's keys and values onto the whole cache, so a turn
of ``n`` tokens over a context of ``L`` copies the cache ``n`` times, and on CPU that copy cost an
agent rollout more than attention itself (bench/README.md, KV cache). This cache writes each step into spare capacity
(doubling when full) and hands attention a view, so a step copies only its own states.

Imported only by the transformers backend (it imports transformers at module level).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose ``keys``/``values`` are views into buffers with spare capacity.

    Everything ``DynamicLayer`` does to ``keys``/``values`` (``crop``, ``batch_select_indices``,
    ``reorder_cache``) still works on them; the next ``update`` notices that they were replaced and
    copies them into fresh buffers once.
    """

    _view: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        length = self.keys.shape[-2] if self.keys.dim() == 4 else 0
        if self.keys is not self._view:
            self._adopt(length, key_states)
        end = length + key_states.shape[-2]
        if end > self._key_buffer.shape[-2]:
            self._grow(max(end, 2 * self._key_buffer.shape[-2]))
        self._key_buffer[..., length:end, :] = key_states
        self._value_buffer[..., length:end, :] = value_states
        self.keys, self.values = self._key_buffer[..., :end, :], self._value_buffer[..., :end, :]
        self._view = self.keys
        return self.keys, self.values

    def _adopt(self, length: int, like: torch.Tensor) -> None:
        """Fresh buffers holding the current ``length`` states (new, cropped or re-selected)."""
        batch, heads, _, dim = like.shape
        self._key_buffer = like.new_empty((batch, heads, 0, dim))
        self._value_buffer = like.new_empty((batch, heads, 0, dim))
        self._grow(max(length, 1))
        if length:
            self._key_buffer[..., :length, :] = self.keys
            self._value_buffer[..., :length, :] = self.values

    def _grow(self, capacity: int) -> None:
        keys = self._key_buffer.new_empty((*self._key_buffer.shape[:2], capacity, self._key_buffer.shape[-1]))
        values = torch.empty_like(keys)
        held = self._key_buffer.shape[-2]
        keys[..., :held, :] = self._key_buffer
        values[..., :held, :] = self._value_buffer
        self._key_buffer, self._value_buffer = keys, values


class GrowingCache(DynamicCache):
    """``DynamicCache`` with ``GrowingLayer`` layers (full attention only: no sliding windows)."""

    def __init__(self) -> None:
        Cache.__init__(self, layer_class_to_replicate=GrowingLayer)
