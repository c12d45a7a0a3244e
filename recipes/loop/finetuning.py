"""Fine-tuning with the policy: joint batches ``(X, augment(X))`` through the library's
:class:`~callbacks.JointBatchTraining`, each transform applied to the samples its own policy picks."""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from augment import AugmentationPolicy, AugmentedBatch, Cutout, HideAndSeek, JointBatch, SyntheticShadow
from augment.catalog import catalog
from augment.modules import sample_accepts
from callbacks import JointBatchTraining
from debugger.contract import CONCEPTS, IMAGE
from recipes.data.base import ContractDataModule
from recipes.loop.checks import check_contract_data
from recipes.loop.run import LoopError, RunDirectory
from recipes.loop.training import train

OBJECT_MASK = "object_mask"

# the strength range of a catalogue transform that a policy names without a measured one (bound by a person, or a
# fallback)
DEFAULT_STRENGTH = (0.4, 0.8)


def default_transforms(image_size: int, seed: int = 0) -> dict[str, nn.Module]:
    """The transforms the annotated policy names: shadows, cutout and Hide-and-Seek sized for ``image_size``."""
    return {
        "SyntheticShadow": SyntheticShadow(p=1.0, kind="line", intensity=(0.4, 0.75), seed=seed),
        "Cutout": Cutout(p=1.0, size=max(2, image_size // 3), seed=seed + 1),
        "HideAndSeek": HideAndSeek(p=1.0, grid=4, p_keep_patch=0.6, seed=seed + 2),
    }


def loop_transforms(image_size: int, seed: int = 0) -> dict[str, nn.Module]:
    """Every transform a policy can name: :func:`default_transforms` and every entry of the catalogue
    (:func:`augment.catalog.catalog`, ours: ``shadow-line``, ``defocus``, ``noise``, …) at strengths
    ``DEFAULT_STRENGTH`` (a policy's matched ``strength`` replaces them, :func:`configure_transforms`).

    Example:
        >>> t = loop_transforms(32)
        >>> [n for n in ("SyntheticShadow", "shadow-line", "defocus", "haze") if n in t]
        ['SyntheticShadow', 'shadow-line', 'defocus', 'haze']
    """
    out = default_transforms(image_size, seed)
    for i, e in enumerate(catalog(("conceptfix",))):
        out[e.name] = _seeded(e.make(DEFAULT_STRENGTH, image_size, image_size), seed + 3 + i)
    return out


def _seeded(module: nn.Module, seed: int | None) -> nn.Module:
    # catalogue entries are built unseeded; the loop's fine-tuning is repeatable, so each gets its own seed
    setattr(module, "seed", seed)  # noqa: B010  (nn.Module's __setattr__ types values as tensors or modules)
    return module


def with_params(module: nn.Module, params: Mapping[str, Any]) -> nn.Module:
    """A new ``module`` of the same class with ``params`` replacing its constructor arguments (the rest kept).

    Raises:
        LoopError: if a key is not an argument of the module's constructor, or the value is not accepted.

    Example:
        >>> shadow = with_params(SyntheticShadow(p=1.0, intensity=(0.4, 0.75), seed=0), {"intensity": (0.8, 0.9)})
        >>> shadow.intensity, shadow.p
        ((0.8, 0.9), 1.0)
    """
    cls = type(module)
    accepted = [n for n, prm in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise LoopError(f"Expected the policy's settings for {cls.__name__} to be among its arguments {accepted}, "
                        f"but got {unknown!r}.")
    kwargs = {n: getattr(module, n) for n in accepted if hasattr(module, n)}
    kwargs.update(params)
    try:
        return cls(**kwargs)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as err:
        raise LoopError(f"Expected settings {dict(params)!r} that {cls.__name__} accepts, but: {err}") from err


def configure_transforms(transforms: Mapping[str, nn.Module], policies: Mapping[str, AugmentationPolicy],
                         image_size: int | None = None) -> dict[str, nn.Module]:
    """``transforms`` with each policy's ``params`` applied to the transform it drives (see :func:`with_params`).

    This is how a failure-calibrated strength (e.g. ``SyntheticShadow(intensity=...)`` measured by
    :func:`loop_policies`) reaches fine-tuning; transforms whose policy carries no ``params`` are unchanged. A
    catalogue entry (``shadow-line``, ``defocus``, …) whose policy carries a matched ``strength`` range
    (:func:`~recipes.loop.policy.matched_policies`) is built anew from its entry at that range for ``image_size``
    images (the catalogue's strength is one knob in ``[0, 1]``, mapped by each entry to its own arguments).

    Example:
        >>> policy = AugmentationPolicy(augmentation="defocus", params={"strength": (0.6, 0.8)})
        >>> configure_transforms(loop_transforms(32), {"defocus": policy}, 32)["defocus"].strength
        (0.6, 0.8)
    """
    out = dict(transforms)
    entries = {e.name: e for e in catalog(("conceptfix",))}
    for name, policy in policies.items():
        if not policy.params or name not in out:
            continue
        if name in entries and set(policy.params) == {"strength"} and image_size is not None:
            low, high = policy.params["strength"]
            seed = getattr(out[name], "seed", None)
            out[name] = _seeded(entries[name].make((float(low), float(high)), image_size, image_size), seed)
        else:
            out[name] = with_params(out[name], policy.params)
    return out


class PolicyJointBatch(JointBatch):
    """Joint batches ``(X, augment(X))`` in which every transform augments the samples its own policy picks.

    The transforms run in ``policies`` order on the same copy, each with its policy's per-sample probabilities
    (from the batch's targets and ``concepts``); a transform whose policy picks no sample of a batch is skipped.
    The batch's ``object_mask`` reaches every transform that takes ``object_masks`` (shadows are placed on the
    object; :class:`~augment.OneOfUniform` passes it on to its shadow). Train with it through
    :class:`~callbacks.JointBatchTraining`, which grows the batches and keeps the transforms' random streams in
    the checkpoint.

    Args:
        transforms: transform name → module (its own ``p`` is replaced by the policy's probabilities).
        policies: transform name → policy; every name must be in ``transforms``.

    Shape:
        - images: ``(B, C, H, W)``; targets ``(B,)`` or ``(B, H, W)``
        - output: :class:`~augment.batch.AugmentedBatch` with ``2B`` rows, clean copies first

    Raises:
        LoopError: if a policy names a transform that is not in ``transforms``.

    Example:
        >>> joint = PolicyJointBatch({"Cutout": Cutout(size=2, seed=0)},
        ...                          {"Cutout": AugmentationPolicy().with_class(1, 1.0)})
        >>> out = joint(torch.ones(2, 1, 4, 4), torch.tensor([0, 1]))
        >>> out.targets.tolist(), out.occluded.tolist()
        ([0, 1, 0, 1], [False, False, False, True])
    """

    def __init__(self, transforms: Mapping[str, nn.Module], policies: Mapping[str, AugmentationPolicy]) -> None:
        for name in policies:
            if name not in transforms:
                raise LoopError(f"Expected every policy's transform to be one of {sorted(transforms)}, "
                                f"but got {name!r}.")
        super().__init__(nn.ModuleDict({name: transforms[name] for name in policies}))
        self.policies = dict(policies)

    def forward(  # type: ignore[override]
        self,
        images: Tensor,
        targets: Tensor,
        extras: dict[str, Tensor] | None = None,
        *,
        probabilities: Tensor | float | None = None,
        generator: torch.Generator | None = None,
    ) -> AugmentedBatch:
        """Duplicate and augment; ``extras`` (``concepts``, ``object_mask``, ...) are duplicated with the rows."""
        if probabilities is not None:
            raise ValueError(f"Expected no `probabilities` (each transform's policy gives its own), but got "
                             f"{probabilities!r}.")
        extras = dict(extras or {})
        concepts, object_masks = extras.get(CONCEPTS), extras.get(OBJECT_MASK)
        out = images
        for name, policy in self.policies.items():
            p = policy.probabilities(targets, concepts).to(images.device)
            if not bool((p > 0).any()):
                continue
            transform = self.occluder[name]  # type: ignore[index]
            kwargs: dict[str, Any] = {"probabilities": p}
            if generator is not None:
                kwargs["generator"] = generator
            if object_masks is not None and sample_accepts(transform, "object_masks"):
                kwargs["object_masks"] = object_masks
            out = transform(out, **kwargs)
        b = images.shape[0]
        changed = (out != images).flatten(1).any(1)
        return AugmentedBatch(
            images=torch.cat([images, out]),
            targets=torch.cat([targets, targets]),
            extras={k: torch.cat([v, v]) for k, v in extras.items()},
            index=torch.arange(b, device=images.device).repeat(2),
            occluded=torch.cat([torch.zeros_like(changed), changed]),
        )


def finetune(
    model: pl.LightningModule,
    datamodule: ContractDataModule,
    policies: Mapping[str, AugmentationPolicy],
    epochs: int = 2,
    lr: float | None = 3e-3,
    transforms: Mapping[str, nn.Module] | None = None,
    run: RunDirectory | None = None,
    stage: str = "finetune",
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    progress: bool = False,
) -> pl.LightningModule:
    """Fine-tune ``model`` on ``datamodule`` with joint batches augmented by ``policies`` (see :func:`train`).

    ``lr`` replaces the model's learning rate (``hparams.lr``) for the fine-tuning; None keeps it.
    An empty ``policies`` is the no-augmentation control with the same budget (plain batches).
    ``transforms`` are added to :func:`loop_transforms` (so every catalogue entry stays nameable). A policy's
    ``params`` (a strength measured from the failure) override its transform's settings
    (:func:`configure_transforms`). The joint batches come from a :class:`~callbacks.JointBatchTraining` over a
    :class:`PolicyJointBatch`, added to ``callbacks``.
    """
    check_contract_data(datamodule)
    sample = datamodule.dataset("train")[0]
    image = sample[IMAGE] if isinstance(sample, Mapping) else sample[0]
    size = int(min(image.shape[-2:]))
    transforms = {**loop_transforms(size, seed), **(transforms or {})}  # the catalogue stays nameable
    transforms = configure_transforms(transforms, policies, size)
    if lr is not None:
        if not lr > 0:
            raise LoopError(f"Expected the fine-tuning `lr` to be positive, but got {lr!r}.")
        if "lr" in model.hparams:
            model.hparams["lr"] = lr
    joint = [JointBatchTraining(PolicyJointBatch(transforms, policies))] if policies else []
    return train(model, datamodule, epochs, run, stage, [*callbacks, *joint], seed, progress)
