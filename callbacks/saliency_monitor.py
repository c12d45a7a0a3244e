"""SaliencyMonitor: saliency maps of a fixed probe set over training, and how much they drift.

Every run computes one Extract & Aggregate map per probe image (Grad-CAM by default, seed 004 C.2) at a chosen
layer and logs it as a heat-map overlay (blue = low, red = high saliency). Tags are one per shown probe image
(``saliency/overlay/probe_00`` ...), each holding one ``[image | overlay]`` pair per run, at least ``tile_size``
pixels a side, under a caption with the true and predicted class (the swatch blue when right, red when wrong)
and the annotated concepts the image holds where the data has them; TensorBoard's step slider on that tag shows
attention moving over epochs (TensorBoard keeps 10 steps per image tag unless started with
``--samples_per_plugin images=N``); ``saliency/overlays`` holds all shown probes in one grid.
Drift is ``1 - cosine`` between an image's normalised map now and at the previous run, logged per shown probe
image (``saliency/drift/probe_00``) and as mean/max over the probe set.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from callbacks._base import Monitor, image_grid, to_display
from callbacks._probe import RunContext, _unwrap_dataset

Method = Literal["gradcam", "normgrad", "selective_normgrad", "linear_approximation", "gradient"]
_METHODS = ("gradcam", "normgrad", "selective_normgrad", "linear_approximation", "gradient")
Explain = Literal["predicted", "target"]


def saliency_drift(previous: Tensor, current: Tensor, eps: float = 1e-12) -> Tensor:
    """``1 - cos(previous_i, current_i)`` per map: 0 when attention did not move, 1 when it moved entirely.

    Maps are compared at the resolution of ``current`` (``previous`` is resized if needed); for non-negative
    maps the value lies in ``[0, 1]``.

    Shape:
        - previous: ``(N, 1, h, w)``; current: ``(N, 1, H, W)``; output: ``(N,)``

    Example:
        >>> a = torch.tensor([[[[1.0, 0.0]]]]); b = torch.tensor([[[[0.0, 1.0]]]])
        >>> saliency_drift(a, a).item(), saliency_drift(a, b).item()
        (0.0, 1.0)
    """
    if previous.dim() != 4 or current.dim() != 4 or previous.shape[0] != current.shape[0]:
        raise ValueError(
            "Expected `previous` and `current` to be (N, 1, h, w) maps of one probe set, but got "
            f"{tuple(previous.shape)!r} and {tuple(current.shape)!r}."
        )
    if previous.shape[-2:] != current.shape[-2:]:
        previous = F.interpolate(previous.float(), size=current.shape[-2:], mode="bilinear", align_corners=False)
    cos = F.cosine_similarity(previous.flatten(1).float(), current.flatten(1).float(), dim=1, eps=eps)
    return (1.0 - cos).clamp_min(0.0)


def heat_overlay(images: Tensor, maps: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend ``[0, 1]`` maps over display images with a blue-to-red colour ramp.

    Shape:
        - images: ``(N, C, H, W)`` in ``[0, 1]`` (C in {1, 3}); maps: ``(N, 1, H, W)`` in ``[0, 1]``
        - output: ``(N, 3, H, W)``

    Example:
        >>> heat_overlay(torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    if images.dim() != 4 or maps.shape != (images.shape[0], 1, *images.shape[-2:]):
        raise ValueError(
            f"Expected `maps` of shape (N, 1, H, W) matching images {tuple(images.shape)!r}, "
            f"but got {tuple(maps.shape)!r}."
        )
    m = maps.clamp(0, 1)
    # a "jet"-like ramp: blue (0) -> cyan -> yellow -> red (1)
    heat = torch.cat([(1.5 - (4 * m - 3).abs()), (1.5 - (4 * m - 2).abs()), (1.5 - (4 * m - 1).abs())], 1).clamp(0, 1)
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    return (1 - alpha) * rgb + alpha * heat


def saliency_caption(
    probe: int, true: str | None, predicted: str | None, concepts: list[str] | None = None
) -> list[str]:
    """The caption lines of one probe image's saliency pair: which probe, true vs predicted class, its concepts.

    Example:
        >>> saliency_caption(3, "cat", "dog", ["shadow"])
        ['probe 03 · true cat · predicted dog (wrong)', 'concepts: shadow']
        >>> saliency_caption(0, "cat", "cat")
        ['probe 00 · true cat · predicted cat (right)']
    """
    head = f"probe {probe:02d}"
    if true is not None:
        head += f" · true {true}"
    if predicted is not None:
        head += f" · predicted {predicted}"
        if true is not None:
            head += " (right)" if true == predicted else " (wrong)"
    lines = [head]
    if concepts is not None:
        lines.append("concepts: " + (", ".join(concepts) if concepts else "none annotated"))
    return lines


def _normalise(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1, 1), flat.amax(1).view(-1, 1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


class SaliencyMonitor(Monitor):
    """Logs saliency overlays of a fixed probe set and their drift between runs.

    Args:
        layer: dotted module name (from ``named_modules()``) whose output the map is taken at.
        method: Extract & Aggregate method of :func:`debugger.saliency.cam.layer_saliency`.
        explain: the predicted class (``"predicted"``) or the ground truth (``"target"``; per pixel for
            segmentation).
        num_images: how many probe images get their own overlay tag and drift scalar (the drift mean/max covers
            the whole probe set).
        drift_size: resolution at which maps are kept between runs (and in the checkpoint) for drift.
        tile_size: least side of the shown image and overlay in pixels (small images are enlarged to it).
        **kwargs: scheduling, probe and budget options of :class:`callbacks._base.Monitor`.

    Example:
        >>> SaliencyMonitor("layer3", every_n_epochs=2, probe_size=32).state_key
        "SaliencyMonitor{'name': None, 'every_n_epochs': 2, 'every_n_train_steps': None}"
    """

    tag_root = "saliency"

    def __init__(
        self,
        layer: str,
        method: Method = "gradcam",
        explain: Explain = "predicted",
        num_images: int = 8,
        drift_size: int = 16,
        tile_size: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"Expected `layer` to be a dotted module name, but got {layer!r}.")
        if method not in _METHODS:
            raise ValueError(f"Expected `method` to be one of {_METHODS!r}, but got {method!r}.")
        if explain not in ("predicted", "target"):
            raise ValueError(f"Expected `explain` to be one of ('predicted', 'target'), but got {explain!r}.")
        if not isinstance(num_images, int) or num_images < 0:
            raise ValueError(f"Expected `num_images` to be a non-negative integer, but got {num_images!r}.")
        if not isinstance(drift_size, int) or drift_size < 1:
            raise ValueError(f"Expected `drift_size` to be a positive integer, but got {drift_size!r}.")
        if not isinstance(tile_size, int) or tile_size < 8:
            raise ValueError(f"Expected `tile_size` to be an integer of at least 8, but got {tile_size!r}.")
        self.tile_size = tile_size
        self.layer = layer
        self.method = method
        self.explain = explain
        self.num_images = num_images
        self.drift_size = drift_size
        self._previous: dict[int, Tensor] = {}  # probe dataset index -> (1, s, s) map of the previous run

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from debugger.capture import resolve_layer

        resolve_layer(pl_module, self.layer)  # fail at setup with the nearest names, not mid-training

    def extra_state(self) -> dict[str, Any]:
        return {"previous": {int(k): v.tolist() for k, v in self._previous.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._previous = {int(k): torch.tensor(v) for k, v in state.get("previous", {}).items()}

    def compute_maps(self, ctx: RunContext) -> tuple[Tensor, int]:
        """Maps ``(n, 1, H, W)`` in ``[0, 1]`` for the probe chunks that fit in the time budget, and ``n``."""
        from debugger.saliency.cam import layer_saliency

        maps = []
        for _, batch in ctx.probe.chunks(self.chunk_size):
            target: Any = "predicted" if self.explain == "predicted" else batch.targets
            h, w = int(batch.images.shape[-2]), int(batch.images.shape[-1])
            m = layer_saliency(ctx.pl_module, batch.images, target, self.layer, self.method, size=(h, w))[self.layer]
            maps.append(_normalise(m.detach()))
            if ctx.out_of_time():
                break
        out = torch.cat(maps)
        return out, int(out.shape[0])

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        maps, n = self.compute_maps(ctx)
        images = to_display(ctx.probe.batch.images[:n])
        small = F.adaptive_avg_pool2d(maps, self.drift_size).cpu()
        indices = ctx.probe.indices[:n]

        shown = min(self.num_images, n)
        overlays = heat_overlay(images, maps)
        if shown:
            self._log_pairs(ctx, images[:shown], overlays[:shown])
            self.log_image(ctx, "overlays", image_grid(overlays[:shown], nrow=min(shown, 8)))

        have = [j for j, idx in enumerate(indices) if idx in self._previous]
        summary: dict[str, Any] = {"maps": n}
        if have:
            prev = torch.stack([self._previous[indices[j]] for j in have])
            drift = saliency_drift(prev, small[have])
            by_pos = dict(zip(have, drift.tolist(), strict=True))
            scalars = {"drift/mean": float(drift.mean()), "drift/max": float(drift.max())}
            scalars.update({f"drift/probe_{j:02d}": by_pos[j] for j in range(shown) if j in by_pos})
            self.log_scalars(ctx, scalars)
            summary["drift_mean"] = round(float(drift.mean()), 6)
        for j, idx in enumerate(indices):
            self._previous[idx] = small[j]
        return summary

    def _log_pairs(self, ctx: RunContext, images: Tensor, overlays: Tensor) -> None:
        """One captioned, enlarged ``[image | overlay]`` pair per shown probe image."""
        from debugger.capture import first_tensor, model_input
        from debugger.render import CORRECT, WRONG, with_caption

        shown = int(images.shape[0])
        batch = ctx.probe.batch
        targets = batch.targets[:shown]
        classification = targets.dim() == 1
        preds = None
        if classification:
            with torch.no_grad():
                x = model_input(ctx.pl_module, batch.images[:shown])
                preds = first_tensor(ctx.pl_module(x), "the model's output").argmax(1).cpu()
        names = getattr(_unwrap_dataset(self._dataset), "classes", None)

        def label(c: int) -> str:
            return str(names[c]) if names is not None and 0 <= c < len(names) else str(c)

        h, w = int(images.shape[-2]), int(images.shape[-1])
        scale = max(1.0, self.tile_size / min(h, w))
        size = (round(h * scale), round(w * scale))
        big = F.interpolate(torch.cat([images.expand(-1, 3, -1, -1), overlays]).float().cpu(), size=size,
                            mode="nearest" if scale >= 2 else "bilinear")
        present = batch.concepts[:shown].cpu() if batch.concepts is not None else None
        for i in range(shown):
            pair = image_grid(torch.stack([big[i], big[shown + i]]), nrow=2, padding=2)
            true = label(int(targets[i])) if classification else None
            pred = label(int(preds[i])) if preds is not None else None
            concepts = None
            if present is not None and ctx.probe.concept_names:
                concepts = [n for n, on in zip(ctx.probe.concept_names, present[i].tolist(), strict=False) if on > 0]
            color = None if true is None or pred is None else (CORRECT if true == pred else WRONG)
            caption = saliency_caption(i, true, pred, concepts)
            pair = with_caption((pair.clamp(0, 1) * 255).round().to(torch.uint8), caption, color)
            self.log_image(ctx, f"overlay/probe_{i:02d}", pair.float() / 255.0)
