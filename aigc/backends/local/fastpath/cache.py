"""A KV cache that reserves room for the prompt and the new tokens and writes each step in place."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def growing_layer_class():
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        """A dynamic cache layer that writes new keys and values into room reserved ahead, not by concatenation.

        ``DynamicLayer`` concatenates at every step, copying the whole cache of the layer each time
        (8% of batched decoding on a CPU). This one reserves ``capacity`` positions (the prompt plus
        the new tokens), writes each step in place and hands attention a view of the filled part.
        If anything else replaces its tensors (a batch reorder, a crop), it copies them into new room.
        """

        def __init__(self, capacity: int = 0, **kwargs: Any):
            super().__init__(**kwargs)
            self.capacity = capacity
            self._view = self._room_k = self._room_v = None

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            used, new = self.get_seq_length(), key_states.shape[-2]
            own = self._view is not None and self.keys is self._view
            if not own or used + new > self._room_k.shape[-2]:
                room = max(used + new, self.capacity, 2 * used)
                shape = (*key_states.shape[:2], room, key_states.shape[-1])
                room_k, room_v = key_states.new_empty(shape), value_states.new_empty(
                    (*value_states.shape[:2], room, value_states.shape[-1]))
                if used:
                    room_k[:, :, :used] = self.keys
                    room_v[:, :, :used] = self.values
                self._room_k, self._room_v = room_k, room_v
            self._room_k[:, :, used : used + new] = key_states
            self._room_v[:, :, used : used + new] = value_states
            self.keys = self._view = self._room_k[:, :, : used + new]
            self.values = self._room_v[:, :, : used + new]
            return self.keys, self.values

        def reset(self) -> None:
            self._view = self._room_k = self._room_v = None
            super().reset()

    return GrowingLayer


def growing_cache(model: Any, capacity: int):
    """A ``DynamicCache`` for ``model`` whose full-attention layers reserve ``capacity`` positions (see GrowingLayer).

    Layers of other kinds (sliding windows) stay as transformers makes them.
    """
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    layer_cls = growing_layer_class()
    cache.layers = [layer_cls(capacity) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache
