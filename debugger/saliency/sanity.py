"""Sanity checks for saliency methods, as functions users run on their own model (seed 004 Ch.7, C.2 §4.3-4.5).

They are unit tests of a method on a model, not quality measures:

- :func:`cascading_randomization` (Adebayo et al. 2018): re-draw the weights layer by layer from the output
  down, on a copy of the model; a method whose maps stay rank-correlated with the original maps does not
  depend on what the model learned.
- :func:`class_sensitivity` (Rebuffi et al. 2020): rank correlation between the maps for the top and the
  bottom predicted class; a method that explains the class should give ≈ 0 (or negative), not ≈ 1.

Correlations are Spearman's, over all elements of each sample's map, with average ranks for ties.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from debugger.saliency._core import attribution_mode, prepare_input
from debugger.saliency.targets import TargetLike

Attribute = Callable[[Tensor, TargetLike], Tensor]


def _average_ranks(x: Tensor) -> Tensor:
    """Ranks ``1..n`` along the last dim, tied values sharing their mean rank (as ``scipy.stats.rankdata``)."""
    n = x.shape[-1]
    sorted_vals, order = x.sort(dim=-1, stable=True)
    pos = torch.arange(1, n + 1, dtype=torch.float64, device=x.device).expand_as(sorted_vals)
    new_group = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_group[..., 1:] = sorted_vals[..., 1:] != sorted_vals[..., :-1]
    group = new_group.long().cumsum(-1) - 1  # group id of each sorted element
    sums = torch.zeros_like(pos).scatter_add_(-1, group, pos)
    counts = torch.zeros_like(pos).scatter_add_(-1, group, torch.ones_like(pos))
    mean_rank = (sums / counts.clamp_min(1)).gather(-1, group)
    return torch.empty_like(mean_rank).scatter_(-1, order, mean_rank)


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation between paired samples' maps (NaN when a map is constant).

    Shape:
        - a, b: ``(B, ...)`` with the same shape
        - return: ``(B,)`` float64

    Example:
        >>> spearman(torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 30.0, 20.0]]))
        tensor([0.5000], dtype=torch.float64)
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"Expected `a` and `b` to be (B, ...) tensors of one shape, but got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    ra = _average_ranks(a.detach().flatten(1).double())
    rb = _average_ranks(b.detach().flatten(1).double())
    ra = ra - ra.mean(1, keepdim=True)
    rb = rb - rb.mean(1, keepdim=True)
    return (ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))


def parameter_layers(model: nn.Module) -> list[str]:
    """Names of the modules that own parameters directly, from the output end to the input end.

    This is registration order reversed, which for the usual ``stem … layerN, fc`` models is the forward
    order reversed.
    """
    names = [n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False))]
    return names[::-1]


def _redraw_(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw each parameter of ``module`` (and its children) from a normal with its own mean and std."""
    with torch.no_grad():
        for p in module.parameters():
            std = float(p.std()) if p.numel() > 1 else 0.0
            std = std if std > 0 else 1.0
            noise = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            p.copy_(noise * std + float(p.mean()))


def cascading_randomization(
    make_attribute: Callable[[nn.Module], Attribute],
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    layers: Sequence[str] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Cascading parameter randomisation: per-image Spearman correlation with the trained model's maps.

    The model is deep-copied once (the caller's model is never modified); the parameters of ``layers``
    (default :func:`parameter_layers`, output end first) are re-drawn cumulatively, one more layer each
    step, from normals matching each parameter's mean and std; a layer may name a block, whose parameters are
    all re-drawn together. Buffers (BatchNorm statistics) are kept.
    ``target`` stays fixed: ``"predicted"`` is resolved once on the trained model.

    Args:
        make_attribute: builds the method for a model, e.g. ``lambda m: GradCAM(m, "layer3").attribute``.
        model: the trained model.
        inputs: images to explain.
        target: what to explain.
        layers: module names to randomise, in cascade order.
        generator: source of the new weights (a fresh one seeded 0 when None).

    Returns:
        ``{layer: (B,) correlations}`` in cascade order; the entry for a layer is measured after it and every
        layer before it in the cascade were randomised.

    Raises:
        ValueError: if ``layers`` is empty or names a module that does not exist.

    Example:
        >>> from debugger.saliency import Gradient
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        >>> out = cascading_randomization(lambda m: Gradient(m).attribute, net, torch.randn(2, 3, 8, 8), 0)
        >>> list(out), tuple(out["3"].shape)
        (['3', '0'], (2,))
    """
    names = parameter_layers(model) if layers is None else list(layers)
    if not names:
        raise ValueError(f"Expected at least one layer to randomise, but got {layers!r}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    # Copied and re-drawn outside inference mode (a Lightning validation hook runs in it): weights made there
    # would be inference tensors, which the attribution's backward pass cannot save.
    with torch.inference_mode(False):
        clone = copy.deepcopy(model)
        modules = dict(clone.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"Expected `layers` to name modules of the model, but got unknown names {unknown!r}.")
        if isinstance(target, str):
            with attribution_mode(clone), torch.no_grad():
                target = clone(prepare_input(inputs, clone)).argmax(1)
        reference = make_attribute(clone)(inputs, target)
        out: dict[str, Tensor] = {}
        for name in names:
            _redraw_(modules[name], gen)
            out[name] = spearman(reference, make_attribute(clone)(inputs, target))
    return out


def class_sensitivity(attribute: Attribute, model: nn.Module, inputs: Tensor) -> Tensor:
    """Spearman correlation between each image's maps for its top and its bottom predicted class.

    Args:
        attribute: the method, e.g. ``NormGrad(model, "layer3").attribute``.
        model: the model ``attribute`` explains (used to find the top and bottom classes).
        inputs: images.

    Returns:
        ``(B,)`` correlations; ≈ 1 means the map ignores the class.

    Example:
        >>> from debugger.saliency import GradCAM
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
        >>> class_sensitivity(GradCAM(net, "1").attribute, net, torch.randn(2, 3, 8, 8)).shape
        torch.Size([2])
    """
    with attribution_mode(model), torch.no_grad():
        logits = model(prepare_input(inputs, model))
    if logits.dim() != 2:
        raise ValueError(f"Expected a classifier's (B, C) logits, but got shape {tuple(logits.shape)}.")
    top = attribute(inputs, logits.argmax(1))
    bottom = attribute(inputs, logits.argmin(1))
    return spearman(top, bottom)
