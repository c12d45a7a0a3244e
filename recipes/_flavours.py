"""Both Lightning flavours at once for the built-in models and data modules.

Users import either ``pytorch_lightning`` or ``lightning.pytorch``, and each Trainer rejects the other's
``LightningModule`` and ``LightningDataModule`` by type. The two packages are the same code under two names, so a
class deriving from the ``pytorch_lightning`` base and, when the unified ``lightning`` package is installed, from its
twin passes either Trainer's type check (``callbacks._base`` does the same for ``Callback``).

Deriving is not quite enough for modules: a Trainer decides whether a hook is overridden by comparing the code of the
model's method with its own base's (``configure_model``, ``on_validation_model_train``, ``optimizer_step``, ...), and
a method inherited from the other flavour looks overridden to it — the ``lightning.pytorch`` Trainer then refuses to
fit ("Both `configure_model` and `configure_sharded_model` are overridden"). So every method both bases define
resolves, per instance, to the flavour of the Trainer the instance is attached to (``pytorch_lightning`` while
unattached); a subclass's own methods are untouched.
"""

from __future__ import annotations

import inspect
from types import FunctionType
from typing import Any

import pytorch_lightning as _pl

try:  # the unified `lightning` package is optional; when present its Trainer must accept our modules too
    import lightning.pytorch as _L
except ImportError:  # pragma: no cover - depends on the environment
    _L = None  # type: ignore[assignment]


def _attached_trainer(obj: Any) -> Any:
    # Read the instance dict: a module's `trainer` property raises while unattached; a data module stores `trainer`.
    state = vars(obj)
    return state.get("_trainer", state.get("trainer"))


class _FlavourMethod:
    """A method both flavours define: bound from the flavour of the attached Trainer."""

    def __init__(self, pl_function: FunctionType, lightning_function: FunctionType) -> None:
        self.functions = (pl_function, lightning_function)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        pl_function, lightning_function = self.functions
        attached_to_lightning = obj is not None and isinstance(_attached_trainer(obj), _L.Trainer)
        return (lightning_function if attached_to_lightning else pl_function).__get__(obj, owner)


def both_flavours(name: str) -> Any:
    """A base class deriving from ``pytorch_lightning.<name>`` and, when installed, ``lightning.pytorch.<name>``,
    whose methods follow the flavour of the Trainer an instance is attached to.

    Args:
        name: ``"LightningModule"`` or ``"LightningDataModule"``.

    Example:
        >>> import pytorch_lightning
        >>> base = both_flavours("LightningDataModule")
        >>> issubclass(base, pytorch_lightning.LightningDataModule)
        True
        >>> base().prepare_data.__module__  # unattached: the pytorch_lightning method
        'pytorch_lightning.core.hooks'
    """
    if name not in ("LightningModule", "LightningDataModule"):
        raise ValueError(f"Expected `name` to be one of ['LightningDataModule', 'LightningModule'], but got {name!r}.")
    pl_base: type = getattr(_pl, name)
    if _L is None:  # pragma: no cover - depends on the environment
        return type(f"_{name}", (pl_base,), {"__doc__": f"``{name}`` of pytorch_lightning."})
    lightning_base: type = getattr(_L, name)
    methods: dict[str, Any] = {}
    for attr in dir(lightning_base):
        if attr.startswith("__"):
            continue
        pl_function = inspect.getattr_static(pl_base, attr, None)
        lightning_function = inspect.getattr_static(lightning_base, attr, None)
        if isinstance(pl_function, FunctionType) and isinstance(lightning_function, FunctionType):
            methods[attr] = _FlavourMethod(pl_function, lightning_function)
    doc = f"``{name}`` of both Lightning flavours, its methods following the attached Trainer's."
    return type(f"_{name}", (pl_base, lightning_base), {"__doc__": doc, **methods})


# Typed `Any` like `callbacks._base._CallbackBase`: `class X(LightningModule)` keeps one implementation for both.
LightningModule: Any = both_flavours("LightningModule")
LightningDataModule: Any = both_flavours("LightningDataModule")
