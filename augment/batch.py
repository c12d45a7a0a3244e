"""Batch-level augmentation: joint batches and batch augmentation (Fong & Vedaldi, thesis appendix C.1).

- :class:`JointBatch` trains on ``(X, occlude(X))`` with the targets duplicated. Standard (per-sample)
  augmentation happens *before* duplication, so the two copies differ only by the occlusion; C.1 finds that
  occlusion helps high-capacity models only when the clean and occluded copies share a mini-batch.
- :class:`BatchAugment` (Hoffer et al.'s batch augmentation, C.1's strongest control) makes ``M`` copies that
  are augmented *independently*, optionally occluding each copy with probability ``1 - p_keep_image``.
- :class:`RandomCropFlip` is the batched standard augmentation (pad + random crop, horizontal flip) that moves
  masks and segmentation targets with the images.

All three work on tensors; ``extras`` carries any other per-sample tensors (concept masks, concept vectors,
object masks): they are duplicated with the batch and, when they have the images' spatial size, moved by the
geometric augmentation. The Lightning integration (``callbacks.joint_batch``) maps contract batches onto this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from augment import params as AP
from augment.modules import check_images


@dataclass(frozen=True)
class AugmentedBatch:
    """A batch grown by duplication.

    Shape:
        - images: ``(M·B, C, H, W)``, copy ``m`` of sample ``b`` at row ``m·B + b``
        - targets: ``(M·B,)`` or ``(M·B, H, W)``
        - extras: each ``(M·B, ...)``
        - index: ``(M·B,)`` int64, the source sample of each row
        - occluded: ``(M·B,)`` bool, which rows were occluded
    """

    images: Tensor
    targets: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    index: Tensor | None = None
    occluded: Tensor | None = None
    params: tuple[Any, ...] = ()


def _check_targets(targets: Any, batch_size: int) -> Tensor:
    if not isinstance(targets, Tensor) or targets.dim() == 0 or targets.shape[0] != batch_size:
        got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"Expected `targets` to be a tensor with batch size {batch_size}, but got {got!r}.")
    return targets


def _check_extras(extras: dict[str, Tensor] | None, batch_size: int) -> dict[str, Tensor]:
    extras = dict(extras or {})
    for k, v in extras.items():
        if not isinstance(v, Tensor) or v.dim() == 0 or v.shape[0] != batch_size:
            got = tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            raise ValueError(f"Expected extra `{k}` to be a tensor with batch size {batch_size}, but got {got!r}.")
    return extras


@dataclass(frozen=True)
class CropFlipParams:
    """Shape: offsets ``(B, 2)`` int64 ``(dx, dy)`` into the padded image; flips ``(B,)`` bool."""

    offsets: Tensor
    flips: Tensor


class RandomCropFlip(nn.Module):
    """Zero-pad by ``padding``, crop back to the original size at a random offset, flip horizontally at random.

    The same geometry moves every extra tensor whose last two dimensions are the images' ``(H, W)`` (masks,
    segmentation targets), so masks follow the geometric change. Padding is 0 (the mean after normalisation)
    for images and masks alike.

    Args:
        padding: pixels added on each side before cropping.
        flip: whether to flip half of the samples horizontally.
        seed: seed of the module's own generator (used when ``forward`` gets none).

    Shape:
        - images: ``(B, C, H, W)``
        - others: ``(B, ..., H, W)`` (moved) or ``(B, ...)`` (returned unchanged)
        - output: a tuple ``(images, *others)``

    Raises:
        ValueError: on a negative ``padding`` or images that are not a floating ``(B, C, H, W)`` tensor.

    Example:
        >>> x = torch.arange(16.0).view(1, 1, 4, 4)
        >>> y, m = RandomCropFlip(padding=1, seed=0)(x, x[:, 0] > 7)
        >>> bool(((y[:, 0] > 7) == m).all())
        True
    """

    def __init__(self, padding: int = 4, flip: bool = True, seed: int | None = None) -> None:
        super().__init__()
        self.padding = AP.check_positive_int("padding", padding, 0)
        self.flip = bool(flip)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def _rng(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return AP.check_generator(generator)
        if self._generator is None:
            self._generator = torch.Generator()
            if self.seed is None:
                self._generator.seed()
            else:
                self._generator.manual_seed(self.seed)
        return self._generator

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> CropFlipParams:
        g = self._rng(generator)
        offsets = torch.randint(0, 2 * self.padding + 1, (batch_size, 2), generator=g)
        flips = (torch.rand(batch_size, generator=g) < 0.5) & self.flip
        return CropFlipParams(offsets, flips)

    def apply_params(self, tensor: Tensor, params: CropFlipParams) -> Tensor:
        """Move one ``(B, ..., H, W)`` tensor by ``params``."""
        b, h, w = tensor.shape[0], tensor.shape[-2], tensor.shape[-1]
        lead = tensor.shape[1:-2]
        x = tensor.reshape(b, -1, h, w)
        p = self.padding
        if p:
            x = F.pad(x if x.is_floating_point() else x.to(torch.float32), (p, p, p, p)).to(tensor.dtype)
        off = params.offsets.to(tensor.device)
        rows = off[:, 1:2] + torch.arange(h, device=tensor.device)  # (B, H)
        cols = off[:, 0:1] + torch.arange(w, device=tensor.device)  # (B, W)
        cols = torch.where(params.flips.to(tensor.device)[:, None], cols.flip(1), cols)
        bi = torch.arange(b, device=tensor.device)[:, None, None]
        out = x.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C')
        return out.permute(0, 3, 1, 2).reshape(b, *lead, h, w)

    def forward(self, images: Tensor, *others: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, ...]:
        images = check_images(images)
        params = self.sample(images.shape[0], generator)
        hw = images.shape[-2:]
        moved = [self.apply_params(t, params) if t.dim() >= 3 and t.shape[-2:] == hw else t for t in others]
        return (self.apply_params(images, params), *moved)


def _augment(augment: nn.Module | None, images: Tensor, targets: Tensor, extras: dict[str, Tensor],
             generator: torch.Generator | None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    if augment is None:
        return images, targets, extras
    keys = list(extras)
    kwargs = {"generator": generator} if generator is not None else {}
    out = augment(images, targets, *(extras[k] for k in keys), **kwargs)
    return out[0], out[1], dict(zip(keys, out[2:], strict=True))


class JointBatch(nn.Module):
    """Joint training batches ``(X, occlude(X))``, targets duplicated (C.1).

    Args:
        occluder: an occlusion or shadow module (``Cutout``, ``HideAndSeek``, ``SaliencyOcclusion``,
            ``SyntheticShadow``) applied to the second copy.
        augment: optional standard augmentation applied once *before* duplication (e.g. ``RandomCropFlip``);
            leave None when the data pipeline already augments per sample.

    Shape:
        - images: ``(B, C, H, W)``
        - targets: ``(B,)`` or ``(B, H, W)``
        - output: :class:`AugmentedBatch` with ``2B`` rows, clean copies first

    Raises:
        ValueError: if targets or extras do not have the images' batch size.

    Example:
        >>> from augment.modules import Cutout
        >>> out = JointBatch(Cutout(size=2, seed=0))(torch.ones(3, 1, 4, 4), torch.tensor([0, 1, 2]))
        >>> tuple(out.images.shape), out.targets.tolist(), out.occluded.tolist()
        ((6, 1, 4, 4), [0, 1, 2, 0, 1, 2], [False, False, False, True, True, True])
    """

    def __init__(self, occluder: nn.Module, augment: nn.Module | None = None) -> None:
        super().__init__()
        self.occluder = occluder
        self.augment = augment

    def forward(
        self,
        images: Tensor,
        targets: Tensor,
        extras: dict[str, Tensor] | None = None,
        *,
        probabilities: Tensor | float | None = None,
        generator: torch.Generator | None = None,
        **occluder_kwargs: Any,
    ) -> AugmentedBatch:
        """Duplicate and occlude; ``occluder_kwargs`` (``saliency=``, ``object_masks=``) go to the occluder."""
        b = check_images(images).shape[0]
        targets = _check_targets(targets, b)
        extras = _check_extras(extras, b)
        # Full-resolution occluder inputs (object masks, a saliency map at image size) describe the pixels, so
        # the standard augmentation moves them too.
        hw = images.shape[-2:]
        moved = {k: v for k, v in occluder_kwargs.items()
                 if isinstance(v, Tensor) and v.dim() >= 3 and v.shape[0] == b and v.shape[-2:] == hw}
        images, targets, both = _augment(self.augment, images, targets, {**extras, **moved}, generator)
        extras = {k: both[k] for k in extras}
        occluder_kwargs.update({k: both[k] for k in moved})
        occluded, params = self.occluder(images, probabilities=probabilities, generator=generator,
                                         return_params=True, **occluder_kwargs)
        index = torch.arange(b, device=images.device).repeat(2)
        flags = torch.cat([torch.zeros(b, dtype=torch.bool), params.applied.cpu()]).to(images.device)
        return AugmentedBatch(
            images=torch.cat([images, occluded]),
            targets=torch.cat([targets, targets]),
            extras={k: torch.cat([v, v]) for k, v in extras.items()},
            index=index,
            occluded=flags,
            params=(params,),
        )


class BatchAugment(nn.Module):
    """Batch augmentation: ``copies`` independently augmented copies of every sample in one batch (C.1, Table 7).

    Args:
        augment: the per-copy augmentation (e.g. ``RandomCropFlip``), called once per copy with fresh randomness.
        copies: ``M``, the number of copies.
        occluder: optional occlusion applied to each copy with probability ``1 - p_keep_image``.
        p_keep_image: probability that a copy is left unoccluded (0: every copy occluded, as in C.1's best run).

    Shape:
        - images: ``(B, C, H, W)``
        - targets: ``(B,)`` or ``(B, H, W)``
        - output: :class:`AugmentedBatch` with ``M·B`` rows

    Raises:
        ValueError: on ``copies < 1``, a probability outside ``[0, 1]``, or targets/extras whose batch size
            differs from the images'.

    Example:
        >>> out = BatchAugment(RandomCropFlip(padding=1, seed=0), copies=2)(torch.rand(3, 1, 4, 4), torch.arange(3))
        >>> tuple(out.images.shape), out.index.tolist()
        ((6, 1, 4, 4), [0, 1, 2, 0, 1, 2])
    """

    def __init__(self, augment: nn.Module, copies: int = 2, occluder: nn.Module | None = None,
                 p_keep_image: float = 1.0) -> None:
        super().__init__()
        self.augment = augment
        self.copies = AP.check_positive_int("copies", copies)
        self.occluder = occluder
        self.p_keep_image = AP.check_probability("p_keep_image", p_keep_image)

    def forward(
        self,
        images: Tensor,
        targets: Tensor,
        extras: dict[str, Tensor] | None = None,
        *,
        probabilities: Tensor | float | None = None,
        generator: torch.Generator | None = None,
        **occluder_kwargs: Any,
    ) -> AugmentedBatch:
        """Make the copies; ``probabilities`` (per sample) scales the occlusion probability ``1 - p_keep_image``."""
        b = check_images(images).shape[0]
        targets = _check_targets(targets, b)
        extras = _check_extras(extras, b)
        p_occ: Tensor | float = 1.0 - self.p_keep_image
        if probabilities is not None:
            p_occ = torch.as_tensor(probabilities, dtype=torch.float32).cpu() * p_occ
        outs, params = [], []
        flags = []
        for _ in range(self.copies):
            x, y, ex = _augment(self.augment, images, targets, extras, generator)
            if self.occluder is not None:
                x, prm = self.occluder(x, probabilities=p_occ, generator=generator, return_params=True,
                                       **occluder_kwargs)
                params.append(prm)
                flags.append(prm.applied.cpu())
            else:
                flags.append(torch.zeros(b, dtype=torch.bool))
            outs.append((x, y, ex))
        return AugmentedBatch(
            images=torch.cat([o[0] for o in outs]),
            targets=torch.cat([o[1] for o in outs]),
            extras={k: torch.cat([o[2][k] for o in outs]) for k in extras},
            index=torch.arange(b, device=images.device).repeat(self.copies),
            occluded=torch.cat(flags).to(images.device),
            params=tuple(params),
        )
