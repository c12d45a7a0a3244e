"""The CAV cache: trained CAVs kept across calls, keyed by the weights, the layer, the examples and settings.

Example:
    >>> cache = CAVCache(max_entries=1)
    >>> cache.put("a", 1); cache.put("b", 2); len(cache), cache.get("a")
    (1, None)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from debugger.fingerprint import tensors_fingerprint
from debugger.tcav.examples import ExampleSet

__all__ = ["CAVCache", "examples_fingerprint"]


def examples_fingerprint(ex: ExampleSet) -> str:
    """A digest of an example set's images, patches and index (see :func:`debugger.fingerprint.tensors_fingerprint`).

    Example:
        >>> import torch
        >>> images = torch.zeros(4, 3, 8, 8)
        >>> examples_fingerprint(ExampleSet(images)) == examples_fingerprint(ExampleSet(images, index=torch.arange(2)))
        False
    """
    patches = ex.patches
    if patches is None:
        return tensors_fingerprint(ex.images, ex.index)
    return tensors_fingerprint(ex.images, patches.image_index, patches.boxes, patches.masks, ex.index)


class CAVCache:
    """A bounded LRU store of trained CAVs, keyed by the model's weights, the layer, the examples and settings.

    The key holds :func:`debugger.fingerprint.model_fingerprint`, so CAVs trained before a weight update are never
    served after it (they simply stop matching and age out); ``hits`` and ``misses`` count lookups.

    Example:
        >>> cache = CAVCache(max_entries=2)
        >>> cache.put(("a",), 1); cache.get(("a",)), cache.get(("b",)), cache.hits, cache.misses
        (1, None, 1, 1)
    """

    def __init__(self, max_entries: int = 64) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"Expected `max_entries` to be a positive integer, but got {max_entries!r}.")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: Hashable) -> Any | None:
        """The value stored under ``key`` (now the most recently used), or None."""
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        """Store ``value`` under ``key``, dropping the least recently used entries beyond ``max_entries``."""
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        """Forget every entry (the hit and miss counts stay)."""
        self._store.clear()
