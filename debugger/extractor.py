"""Human-guided concept extractors (seed 000 §4.2 and §7.1).

A person names a concept by labelling a few patches positive (shows it) or negative (does not); a tiny
network on the model's **spatial** latent tensor of each patch learns to retrieve the rest:

    latent ``(C, h, w)`` → one convolution to one channel → global max pooling → sigmoid = concept confidence.

Max pooling makes it a detector: a patch scores high when the concept shows anywhere in it. Training is binary
cross-entropy with Adam, stopped once the validation loss has not fallen for ``patience`` epochs (the best
weights are kept). The few labelled patches are expanded to ``n_augment`` positives and ``n_augment`` negatives:
each draw picks a labelled patch at random, cuts it out and resizes it like ``embed_patches(mode="resample")``,
applies random shape policies (shear, flip, rotate) and colour policies (grayscale, blur), and is re-embedded
through the model at the layer. A positive may be a whole patch or a brushed rectangle within it. The
validation set is a second, independent augmented draw of the same labelled patches (with a handful of labels
there is nothing else to hold out).

Only the head is trained; the model is never changed. The pool's latent tensors can be computed once
(:meth:`ConceptExtractor.embed`) and scored after every fit (:meth:`ConceptExtractor.score_latents`), so an active
learning stage costs the augmented re-embedding plus a few hundred milliseconds of head training.

Example:
    >>> from debugger.patches import sliding_windows
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    >>> images = torch.rand(4, 3, 8, 8)
    >>> images[:2, 0] += 2.0  # a red concept in the first two images
    >>> ps = sliding_windows(images, sizes=(8,))
    >>> ex = ConceptExtractor(net, "1", name="red", n_augment=20, max_epochs=5).fit(images, ps, [0, 1], [2, 3])
    >>> ex.score(images, ps).shape
    torch.Size([4])
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.embed import _fill_tensor, embed_images, embed_patches, resample_patches
from debugger.structures import Concept, PatchSet

Policy = Literal["shear", "flip", "rotate", "grayscale", "blur"]
POLICIES: tuple[str, ...] = ("shear", "flip", "rotate", "grayscale", "blur")
Example = int | tuple[int, Sequence[int]]

__all__ = [
    "POLICIES",
    "ConceptExtractor",
    "ExtractorHead",
    "augment_patches",
    "train_head",
]


def augment_patches(
    crops: Tensor,
    generator: torch.Generator,
    policies: Sequence[str] = POLICIES,
    p: float = 0.5,
    fill: Tensor | float = 0.5,
    max_shear: float = 0.3,
    max_rotate: float = 30.0,
    blur_sigma: tuple[float, float] = (0.5, 1.5),
) -> Tensor:
    """Apply each policy to each crop independently with probability ``p`` (one batched pass, seed 000 §4.2).

    Shape policies are one affine warp per crop (shear up to ``max_shear``, a horizontal flip, rotation up to
    ``max_rotate`` degrees; uncovered pixels get ``fill``); colour policies replace a 3-channel crop by its
    luminance (``grayscale``) and blur with a 5×5 Gaussian of random ``sigma`` (``blur``, reflect padding).

    Shape:
        - crops: ``(B, C, H, W)``
        - output: ``(B, C, H, W)``

    Raises:
        ValueError: for an unknown policy or ``p`` outside ``[0, 1]``.

    Example:
        >>> x = torch.rand(3, 3, 8, 8)
        >>> augment_patches(x, torch.Generator().manual_seed(0), policies=("flip",), p=1.0).equal(x.flip(3))
        True
    """
    for name in policies:
        if name not in POLICIES:
            raise ValueError(f"Expected every policy to be one of {POLICIES!r}, but got {name!r}.")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"Expected `p` to be a probability in [0, 1], but got {p!r}.")
    b, c, h, w = crops.shape
    dev, dt = crops.device, crops.dtype

    def chosen(name: str) -> Tensor:
        draw = torch.rand(b, generator=generator) < p  # drawn for every policy so the stream never shifts
        return (draw if name in policies else torch.zeros_like(draw)).to(dev)

    shear, flip, rotate = chosen("shear"), chosen("flip"), chosen("rotate")
    grey, blur = chosen("grayscale"), chosen("blur")
    sh = (torch.rand(b, generator=generator) * 2 - 1).to(dev, dt) * max_shear * shear
    angle = (torch.rand(b, generator=generator) * 2 - 1).to(dev, dt) * math.radians(max_rotate) * rotate
    sigma = (blur_sigma[0] + (blur_sigma[1] - blur_sigma[0]) * torch.rand(b, generator=generator)).to(dev, dt)
    out = crops
    if bool((shear | flip | rotate).any()):
        cos, sin = torch.cos(angle), torch.sin(angle)
        sx = torch.where(flip, -1.0, 1.0).to(dt)
        # output → input sampling matrix: rotation · shear · flip, exact identity for crops drawing no policy
        theta = torch.zeros(b, 2, 3, device=dev, dtype=dt)
        theta[:, 0, 0] = cos * sx
        theta[:, 0, 1] = cos * sh - sin
        theta[:, 1, 0] = sin * sx
        theta[:, 1, 1] = sin * sh + cos
        fill_t = torch.as_tensor(fill, device=dev, dtype=dt).reshape(1, -1, 1, 1)
        grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
        warped = F.grid_sample(out - fill_t, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill_t
        moved = (shear | flip | rotate)[:, None, None, None]
        # flips alone are exact pixel permutations; take them from torch.flip so no resampling blur creeps in
        only_flip = (flip & ~shear & ~rotate)[:, None, None, None]
        out = torch.where(only_flip, out.flip(3), torch.where(moved, warped, out))
    if c == 3 and bool(grey.any()):
        lum = (out * torch.tensor([0.299, 0.587, 0.114], device=dev, dtype=dt).view(1, 3, 1, 1)).sum(1, keepdim=True)
        out = torch.where(grey[:, None, None, None], lum.expand_as(out), out)
    if bool(blur.any()):
        r = torch.arange(-2, 3, device=dev, dtype=dt)
        k1 = torch.exp(-(r[None, :] ** 2) / (2 * sigma[:, None] ** 2))
        k1 = k1 / k1.sum(1, keepdim=True)  # (B, 5)
        k2 = (k1[:, :, None] * k1[:, None, :]).repeat_interleave(c, 0)[:, None]  # (B*C, 1, 5, 5)
        padded = F.pad(out.reshape(1, b * c, h, w), (2, 2, 2, 2), mode="reflect")
        blurred = F.conv2d(padded, k2, groups=b * c).reshape(b, c, h, w)
        out = torch.where(blur[:, None, None, None], blurred, out)
    return out


@contextmanager
def _one_thread() -> Iterator[None]:
    """The head's ops are tiny: intra-op threads only add synchronisation, which on a busy CPU outweighs the ops."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ExtractorHead(nn.Module):
    """Conv → global max pool → (sigmoid outside): seed 000's concept extractor on a ``(C, h, w)`` latent tensor.

    Inputs are standardised per channel with statistics fixed at fit time (buffers), so one learning rate suits
    any layer's activation scale. ``forward`` returns logits; the concept confidence is their sigmoid.

    Shape:
        - input: ``(B, C, h, w)``
        - output: ``(B,)`` logits
    """

    mean: Tensor
    std: Tensor

    def __init__(self, channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Expected `kernel_size` to be a positive odd integer, but got {kernel_size!r}.")
        self.conv = nn.Conv2d(channels, 1, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)  # type: ignore[arg-type]  # Conv2d has a bias unless told otherwise
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        z = self.conv((x - self.mean) / self.std)
        return z.flatten(1).amax(1)


def train_head(
    head: ExtractorHead,
    x: Tensor,
    y: Tensor,
    x_val: Tensor,
    y_val: Tensor,
    generator: torch.Generator,
    lr: float = 1e-2,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    max_epochs: int = 50,
    patience: int = 3,
    tol: float = 1e-2,
) -> list[dict[str, float]]:
    """Fit ``head`` with BCE until the validation loss has not fallen by more than ``tol`` for ``patience`` epochs;
    keep the best weights.

    Sets the head's standardisation from ``x``. Returns one ``{"epoch", "train_loss", "val_loss"}`` per epoch.

    Shape:
        - x, x_val: ``(N, C, h, w)``; y, y_val: ``(N,)`` in ``{0, 1}``
    """
    with torch.no_grad():
        head.mean.copy_(x.mean((0, 2, 3), keepdim=True))
        head.std.copy_(x.std((0, 2, 3), keepdim=True).clamp_min(1e-6) if len(x) > 1 else torch.ones_like(head.std))
    opt = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=weight_decay)
    y, y_val = y.float(), y_val.float()
    best = ref = math.inf
    best_state = {k: v.clone() for k, v in head.state_dict().items()}
    history: list[dict[str, float]] = []
    stale = 0
    for epoch in range(max_epochs):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for s in range(0, len(x), batch_size):
            idx = order[s : s + batch_size]
            loss = F.binary_cross_entropy_with_logits(head(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        with torch.no_grad():
            val = float(F.binary_cross_entropy_with_logits(head(x_val), y_val))
        history.append({"epoch": epoch, "train_loss": total / len(x), "val_loss": val})
        if val < best:
            best = val
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        if val < ref - tol:  # patience counts epochs without a fall of more than `tol`
            ref, stale = val, 0
        else:
            stale += 1
            if stale >= patience:
                break
    head.load_state_dict(best_state)
    return history


def _as_examples(examples: Sequence[Example], label: int, n_patches: int, what: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for e in examples:
        if isinstance(e, tuple | list):
            if len(e) != 2 or len(e[1]) != 4:
                raise ValueError(
                    f"Expected each of `{what}` to be a patch index or (patch index, (x0, y0, x1, y1)), but got {e!r}."
                )
            idx, box = int(e[0]), [int(v) for v in e[1]]
        else:
            idx, box = int(e), None
        if not 0 <= idx < n_patches:
            raise ValueError(f"Expected patch indices in [0, {n_patches}) in `{what}`, but got {idx}.")
        out.append({"patch": idx, "label": label, "box": box})
    return out


class ConceptExtractor:
    """A named concept extractor at one layer of a model, trained from labelled patches (seed 000 §7.1).

    Construction stores configuration only; :meth:`fit` (labelled patches, augmented and re-embedded) or
    :meth:`fit_latents` (latent tensors and labels as they are) trains the head. Fitted attributes: ``head_``,
    ``history_`` (one dict per fit: epochs, losses, seconds, label counts), ``examples_`` (the labelled patches of
    the last :meth:`fit`), ``latent_shape_``.

    Args:
        model: the network whose latent tensors the extractor reads (never modified).
        layer: dotted layer name giving ``(B, C, h, w)`` activations.
        name: the concept's name (also its file name in :meth:`save`).
        n_augment: positives and negatives each generated for training.
        n_val: positives and negatives each generated for validation (default ``n_augment // 4``, at least 16).
        policies: augmentation policies (:data:`POLICIES`).
        policy_p: probability of applying each policy to a draw.
        kernel_size: the head's convolution size (odd). 3 (the default) against 1 raised the upper bound's
            precision@50 for the planted stripes texture from 0.08 to 0.56 (layer2, all labels, one seed).
        lr, weight_decay, batch_size, max_epochs, patience, tol: head training (see :func:`train_head`).
        fill: grey value for pixels outside a patch (as in :func:`debugger.embed.embed_patches`).
        use_masks: grey out pixels outside superpixel masks.
        input_size: size patches are resized to (default the images' size).
        embed_batch_size: crops per forward.
        seed: seeds augmentation and training.

    Raises:
        ValueError: for an unknown policy, a non-positive count, an even kernel size or a probability
            outside [0, 1].
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        name: str = "concept",
        n_augment: int = 200,
        n_val: int | None = None,
        policies: Sequence[Policy] = ("shear", "flip", "rotate", "grayscale", "blur"),
        policy_p: float = 0.5,
        kernel_size: int = 3,
        lr: float = 1e-2,
        weight_decay: float = 1e-4,
        batch_size: int = 64,
        max_epochs: int = 50,
        patience: int = 3,
        tol: float = 1e-2,
        fill: float | Sequence[float] | Tensor | str = 0.5,
        use_masks: bool = True,
        input_size: tuple[int, int] | None = None,
        embed_batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        for what, v in (("n_augment", n_augment), ("batch_size", batch_size), ("max_epochs", max_epochs),
                        ("patience", patience), ("embed_batch_size", embed_batch_size)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Expected `{what}` to be a positive integer, but got {v!r}.")
        if n_val is not None and (not isinstance(n_val, int) or n_val < 1):
            raise ValueError(f"Expected `n_val` to be None or a positive integer, but got {n_val!r}.")
        for pol in policies:
            if pol not in POLICIES:
                raise ValueError(f"Expected every policy to be one of {POLICIES!r}, but got {pol!r}.")
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"Expected `name` to be a non-empty file-safe string, but got {name!r}.")
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"Expected `kernel_size` to be a positive odd integer, but got {kernel_size!r}.")
        if not 0.0 <= policy_p <= 1.0:
            raise ValueError(f"Expected `policy_p` to be a probability in [0, 1], but got {policy_p!r}.")
        self.model = model
        self.layer = layer
        self.name = name
        self.n_augment = n_augment
        self.n_val = n_val
        self.policies = tuple(policies)
        self.policy_p = policy_p
        self.kernel_size = kernel_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.tol = tol
        self.fill = fill
        self.use_masks = use_masks
        self.input_size = input_size
        self.embed_batch_size = embed_batch_size
        self.seed = seed
        self.history_: list[dict[str, Any]] = []
        self.examples_: list[dict[str, Any]] = []

    # -- latents -----------------------------------------------------------------------------------------

    def embed(self, images: Tensor, patches: PatchSet) -> Tensor:
        """The spatial latent tensor of every patch (resampled through the model); cache it and reuse it.

        Shape:
            - output: ``(P, C, h, w)``
        """
        return embed_patches(self.model, self.layer, images, patches, mode="resample", reduce="none",
                             batch_size=self.embed_batch_size, fill=self.fill, use_masks=self.use_masks,
                             input_size=self.input_size)

    def _crops(self, images: Tensor, patches: PatchSet, examples: list[dict[str, Any]]) -> Tensor:
        idx = torch.tensor([e["patch"] for e in examples], dtype=torch.long)
        boxes = patches.boxes[idx].clone()
        for i, e in enumerate(examples):
            if e["box"] is not None:  # a brushed rectangle: its part of the patch only
                x0, y0, x1, y1 = e["box"]
                px0, py0, px1, py1 = boxes[i].tolist()
                nb = [max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)]
                if nb[2] <= nb[0] or nb[3] <= nb[1]:
                    raise ValueError(
                        f"Expected the brushed box {e['box']!r} to overlap patch {e['patch']}'s box "
                        f"{[px0, py0, px1, py1]!r}, but it does not."
                    )
                boxes[i] = torch.tensor(nb)
        masks = patches.masks[idx] if (self.use_masks and patches.masks is not None) else None
        fill = _fill_tensor(self.fill, images)
        return resample_patches(images[patches.image_index[idx]], boxes, masks, self.input_size, fill)

    def _augmented_latents(self, crops: Tensor, n: int, g: torch.Generator) -> Tensor:
        pick = torch.randint(len(crops), (n,), generator=g)
        fill = _fill_tensor(self.fill, crops)
        x = augment_patches(crops[pick], g, self.policies, self.policy_p, fill)
        return embed_images(self.model, self.layer, x, "none", self.embed_batch_size)

    # -- fitting -----------------------------------------------------------------------------------------

    def fit(
        self,
        images: Tensor,
        patches: PatchSet,
        positives: Sequence[Example],
        negatives: Sequence[Example],
    ) -> ConceptExtractor:
        """Train from labelled patches: each a patch index, or ``(patch index, (x0, y0, x1, y1))`` for a brushed
        rectangle (image pixels; the part of the patch inside it is the example).

        Shape:
            - images: ``(N, C, H, W)``, the images ``patches`` were cut from

        Raises:
            ValueError: if either side has no example, an index is out of range, a brushed box misses its
                patch, or the layer's activations are not ``(B, C, h, w)``.
        """
        if len(positives) == 0 or len(negatives) == 0:
            raise ValueError(
                f"Expected at least one positive and one negative example, but got {len(positives)} positives "
                f"and {len(negatives)} negatives."
            )
        pos = _as_examples(positives, 1, len(patches), "positives")
        neg = _as_examples(negatives, 0, len(patches), "negatives")
        clock = time.perf_counter()
        g = torch.Generator().manual_seed(self.seed + 7919 * len(self.history_))
        n_val = self.n_val if self.n_val is not None else max(16, self.n_augment // 4)
        crops_p, crops_n = self._crops(images, patches, pos), self._crops(images, patches, neg)
        x = torch.cat([self._augmented_latents(crops_p, self.n_augment, g),
                       self._augmented_latents(crops_n, self.n_augment, g)])
        x_val = torch.cat([self._augmented_latents(crops_p, n_val, g), self._augmented_latents(crops_n, n_val, g)])
        y = torch.cat([torch.ones(self.n_augment), torch.zeros(self.n_augment)])
        y_val = torch.cat([torch.ones(n_val), torch.zeros(n_val)])
        embed_s = time.perf_counter() - clock
        self._train(x, y, x_val, y_val, g, extra={"positives": len(pos), "negatives": len(neg),
                                                  "embed_seconds": embed_s})
        self.history_[-1]["seconds"] = time.perf_counter() - clock
        self.examples_ = pos + neg
        return self

    def fit_latents(self, x: Tensor, y: Tensor, x_val: Tensor | None = None, y_val: Tensor | None = None,
                    val_fraction: float = 0.2) -> ConceptExtractor:
        """Train on latent tensors and labels as they are (no augmentation), e.g. every labelled patch at once.

        Without ``x_val`` a seeded, stratified ``val_fraction`` of ``x`` is held out for early stopping.

        Shape:
            - x: ``(N, C, h, w)``; y: ``(N,)`` in ``{0, 1}``

        Raises:
            ValueError: for a latent tensor that is not 4-D, labels that are not 0/1 or of another length, or a
                side without examples.
        """
        self._check_latents(x)
        y = torch.as_tensor(y).flatten()
        if y.shape[0] != x.shape[0] or not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(
                f"Expected {x.shape[0]} labels in {{0, 1}}, but got {y.shape[0]} values {y.unique().tolist()!r}."
            )
        if int(y.sum()) == 0 or int((y == 0).sum()) == 0:
            raise ValueError(f"Expected at least one positive and one negative label, but got {int(y.sum())} positives "
                             f"of {len(y)}.")
        clock = time.perf_counter()
        g = torch.Generator().manual_seed(self.seed + 7919 * len(self.history_))
        if x_val is None or y_val is None:
            val = torch.zeros(len(y), dtype=torch.bool)
            for cls in (0, 1):
                members = (y == cls).nonzero().flatten()
                members = members[torch.randperm(len(members), generator=g)]
                val[members[: int(len(members) * val_fraction)]] = True
            if not bool(val.any()) or bool(val.all()):
                val = torch.ones(len(y), dtype=torch.bool)  # too few to hold out: validate on the training set
                x_val, y_val = x, y
            else:
                x_val, y_val = x[val], y[val]
                x, y = x[~val], y[~val]
        self._train(x, y.float(), x_val, torch.as_tensor(y_val).float(), g,
                    extra={"positives": int(y.sum()), "negatives": int((y == 0).sum())})
        self.history_[-1]["seconds"] = time.perf_counter() - clock
        return self

    def _check_latents(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"Expected latent tensors of shape (N, C, h, w), but got {shape!r}.")
        if hasattr(self, "latent_shape_") and tuple(x.shape[1:2]) != self.latent_shape_[:1]:
            raise ValueError(
                f"Expected latent tensors with {self.latent_shape_[0]} channels like the extractor's, "
                f"but got shape {tuple(x.shape)!r}."
            )

    def _train(self, x: Tensor, y: Tensor, x_val: Tensor, y_val: Tensor, g: torch.Generator,
               extra: dict[str, Any]) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"Expected layer {self.layer!r} to give a spatial latent tensor (B, C, h, w), "
                f"but got {tuple(x.shape)!r}."
            )
        head = ExtractorHead(int(x.shape[1]), self.kernel_size)
        clock = time.perf_counter()
        with _one_thread():
            hist = train_head(head, x, y, x_val, y_val, g, lr=self.lr, weight_decay=self.weight_decay,
                              batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
                              tol=self.tol)
        head.eval()
        self.head_ = head
        self.latent_shape_ = tuple(int(v) for v in x.shape[1:])
        best = min(h["val_loss"] for h in hist)
        self.history_.append(dict(extra, epochs=len(hist), best_val_loss=best, final_train_loss=hist[-1]["train_loss"],
                                  train_seconds=time.perf_counter() - clock, curve=hist))

    # -- scoring -----------------------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "head_"):
            raise RuntimeError(f"Expected the concept extractor {self.name!r} to be fitted; call fit() first.")

    def score_latents(self, latents: Tensor, batch_size: int = 4096) -> Tensor:
        """Concept confidence in ``[0, 1]`` for each latent tensor.

        Shape:
            - latents: ``(P, C, h, w)``
            - output: ``(P,)``

        Raises:
            RuntimeError: before fitting. ValueError: for latents of another shape than the extractor's.
        """
        self._check_fitted()
        self._check_latents(latents)
        with torch.no_grad(), _one_thread():
            return torch.cat([torch.sigmoid(self.head_(latents[s : s + batch_size]))
                              for s in range(0, len(latents), batch_size)])

    def score(self, images: Tensor, patches: PatchSet) -> Tensor:
        """Concept confidence of every patch (embeds them first; prefer :meth:`score_latents` on a cache)."""
        self._check_fitted()
        return self.score_latents(self.embed(images, patches))

    def to_concept(self, scores: Tensor, id: int = 0, threshold: float = 0.5) -> Concept:
        """A :class:`Concept` from per-patch confidences: members score at least ``threshold``.

        It goes into concept-conditioned confusion and failure ranking like a discovered concept (see
        ``ConceptAnalysis(extra_concepts=...)``).
        """
        members = (scores >= threshold).nonzero().flatten()
        n_pos = sum(1 for e in self.examples_ if e["label"] == 1)
        return Concept(id=id, name=self.name, members=members, scores=scores.float(),
                       meta={"source": "extractor", "layer": self.layer, "threshold": threshold,
                             "labelled_positives": n_pos, "labelled_negatives": len(self.examples_) - n_pos})

    def concept(self, images: Tensor, patches: PatchSet) -> Concept:
        """Score ``patches`` and return the concept (the callable ``ConceptAnalysis(extra_concepts=...)`` takes)."""
        return self.to_concept(self.score(images, patches))

    # -- persistence -------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Weights, configuration, labelled examples and history as plain values and tensors."""
        self._check_fitted()
        config = {k: getattr(self, k) for k in ("layer", "name", "n_augment", "n_val", "policy_p", "kernel_size",
                                                  "lr", "weight_decay", "batch_size", "max_epochs", "patience", "tol",
                                                  "use_masks", "embed_batch_size", "seed")}
        config["policies"] = list(self.policies)
        config["input_size"] = list(self.input_size) if self.input_size is not None else None
        config["fill"] = self.fill.tolist() if isinstance(self.fill, Tensor) else (
            list(self.fill) if isinstance(self.fill, tuple | list) else self.fill)
        return {"format": 1, "config": config, "weights": self.head_.state_dict(),
                "latent_shape": list(self.latent_shape_), "examples": self.examples_, "history": self.history_}

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/<name>.pt`` atomically (temporary file, then rename); returns the path."""
        state = self.state()
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{self.name}.pt"
        tmp = d / f".{self.name}.pt.tmp-{os.getpid()}"
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return path

    @classmethod
    def load(cls, directory: str | Path, name: str, model: nn.Module) -> ConceptExtractor:
        """Reload the extractor saved as ``name`` in ``directory``, reading latents from ``model``.

        Raises:
            FileNotFoundError: if no such concept was saved (the message lists the saved names).
        """
        path = Path(directory) / f"{name}.pt"
        if not path.exists():
            saved = sorted(p.stem for p in Path(directory).glob("*.pt")) if Path(directory).is_dir() else []
            raise FileNotFoundError(f"Expected a saved concept {name!r} in {str(directory)!r}, but found {saved!r}.")
        state = torch.load(path, weights_only=True)
        cfg = dict(state["config"])
        if cfg["input_size"] is not None:
            cfg["input_size"] = tuple(cfg["input_size"])
        ex = cls(model, **cfg)
        shape = tuple(state["latent_shape"])
        head = ExtractorHead(shape[0], ex.kernel_size)
        head.load_state_dict(state["weights"])
        head.eval()
        ex.head_ = head
        ex.latent_shape_ = shape
        ex.examples_ = list(state["examples"])
        ex.history_ = list(state["history"])
        return ex
