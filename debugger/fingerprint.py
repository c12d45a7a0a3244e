"""Fingerprints: short digests saying which weights (or which examples) a stored result was computed from.

A result cached or written to disk is only valid for the weights it came from; keying it by
:func:`model_fingerprint` makes a stale entry stop matching after any training step instead of being served.

Example:
    >>> from torch import nn
    >>> net = nn.Linear(2, 1)
    >>> len(model_fingerprint(net)), model_fingerprint(net) == model_fingerprint(net)
    (32, True)
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["model_fingerprint", "tensors_fingerprint"]


def _update(h: Any, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """A digest of every parameter and buffer (names, dtypes, shapes, values): changes with any training step.

    Non-persistent buffers count too (they are part of what the forward computes), so two models with equal
    ``state_dict`` can still differ here.

    Returns:
        32 hexadecimal characters.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> a = model_fingerprint(net)
        >>> with torch.no_grad():
        ...     net.bias += 1
        >>> a == model_fingerprint(net)
        False
    """
    h = hashlib.blake2b(digest_size=16)
    for name, t in (*model.named_parameters(), *model.named_buffers()):
        h.update(name.encode())
        _update(h, t)
    return h.hexdigest()


def tensors_fingerprint(*tensors: Tensor | None) -> str:
    """A digest of a sequence of tensors (dtypes, shapes, values, in order); ``None`` entries are skipped.

    Returns:
        32 hexadecimal characters.

    Example:
        >>> a = tensors_fingerprint(torch.zeros(2), None, torch.ones(3))
        >>> a == tensors_fingerprint(torch.zeros(2), torch.ones(3)), a == tensors_fingerprint(torch.zeros(2))
        (True, False)
    """
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is not None:
            _update(h, t)
    return h.hexdigest()
