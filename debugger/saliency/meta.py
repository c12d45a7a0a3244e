"""Meta-saliency (Rebuffi, Fong et al. 2020, §4.4; seed 004 App. C.2): saliency after one virtual SGD step.

The objective ``L(θ, x) = ℓ(θ − ε∇_θ ℓ(θ, x), x)`` asks how the loss *after* learning from the example changes with
the input. With a backward finite difference its gradient becomes the gradient of ``ℓ`` at the stepped weights
``θ′ = θ − 2ε ∇_θ ℓ(θ, x)``: one SGD step of learning rate ``2ε`` towards the explained class (``ε = 0.001`` in the
paper, so ``lr = 0.002``). Any saliency method then runs at ``θ′``. ``ascent=True`` steps away from the class
instead (the paper's "degradation" map).

The step is virtual: :func:`stepped_parameters` differentiates :func:`torch.func.functional_call` with respect to
detached copies of the parameters, so the model's parameters, their ``.grad`` and any optimizer state stay
bit-identical. The saliency method sees a module (:class:`SteppedModel`) whose submodules are the model's own,
under the same dotted names, so layer methods (``GradCAM(m, "layer4")``) hook them as usual; its forward calls the
model with the stepped weights. Each example of a batch gets its own step, as the method defines it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from debugger.saliency._core import attribution_mode, prepare_input
from debugger.saliency.targets import ClassTarget, TargetLike, resolve_target

__all__ = ["MetaSaliency", "SteppedModel", "meta_saliency", "stepped_parameters"]

SaliencyFn = Callable[[nn.Module, Tensor, Any], Tensor]


def _loss(output: Tensor, target: TargetLike) -> Tensor:
    """Cross-entropy with the explained class as the label; minus the target's score for other targets."""
    if isinstance(target, int) or (isinstance(target, Tensor) and target.dim() <= 1):
        return -ClassTarget(target, "log_softmax")(output).sum()
    return -resolve_target(target, output)(output).sum()


def stepped_parameters(
    model: nn.Module, inputs: Tensor, target: TargetLike, lr: float = 0.002, ascent: bool = False
) -> dict[str, Tensor]:
    """The parameters after one virtual SGD step on ``(inputs, target)``, as new tensors (the model is untouched).

    The step runs in eval mode (BatchNorm uses, and does not update, its running statistics). Frozen parameters
    (``requires_grad=False``) and parameters the loss does not reach keep their values.

    Args:
        model: the network.
        inputs: the example(s) the step learns from (their losses are summed).
        target: the class to learn towards (cross-entropy); any other target callable's score is maximised.
        lr: the step size, ``2ε`` of the paper.
        ascent: step away from the target instead.

    Returns:
        parameter name → stepped tensor (detached).

    Shape:
        - inputs: ``(B, C, H, W)``

    Raises:
        ValueError: if ``lr`` is not a positive number.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(1, 2, bias=False))
        >>> with torch.no_grad():
        ...     _ = net[1].weight.zero_()
        >>> stepped_parameters(net, torch.ones(1, 1, 1, 1), 0, lr=1.0)["1.weight"]  # w' = w − lr (p − e₀) x
        tensor([[ 0.5000],
                [-0.5000]])
    """
    if isinstance(lr, bool) or not isinstance(lr, float | int) or lr <= 0:
        raise ValueError(f"Expected `lr` to be a positive number, but got {lr!r}.")
    named = dict(model.named_parameters())
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        free = {n: p.detach().requires_grad_(p.requires_grad) for n, p in named.items()}
        trainable = [n for n, p in free.items() if p.requires_grad]
        loss = _loss(functional_call(model, free, (x,)), target)
        grads = torch.autograd.grad(loss, [free[n] for n in trainable], allow_unused=True)
        # still outside inference mode: stepped tensors made under a caller's inference_mode could not enter
        # the saliency method's autograd graph
        sign = 1.0 if ascent else -1.0
        stepped = {n: p.detach() for n, p in free.items()}
        for n, g in zip(trainable, grads, strict=True):
            if g is not None:
                stepped[n] = stepped[n] + sign * lr * g.detach()
    return stepped


class SteppedModel(nn.Module):
    """The model run with other parameter values, its submodules shared under the same names.

    Hooks put on ``SteppedModel(model, p).get_submodule("layer4")`` are on ``model.layer4`` itself, and fire
    because the forward is ``functional_call(model, parameters, ...)``. Nothing of ``model`` is modified.

    Args:
        model: the network.
        parameters: name → tensor replacing the parameter of that name (others keep the model's).

    Example:
        >>> net = nn.Sequential(nn.Linear(1, 1, bias=False))
        >>> SteppedModel(net, {"0.weight": torch.tensor([[3.0]])})(torch.tensor([[2.0]]))
        tensor([[6.]])
    """

    def __init__(self, model: nn.Module, parameters: dict[str, Tensor]) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        self._stepped = parameters
        self.training = model.training
        # kept in the instance dict, not registered as a submodule: its names would gain a prefix
        self.__dict__["_model"] = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        model: nn.Module = self.__dict__["_model"]
        return functional_call(model, self._stepped, args, kwargs)


def _per_example(target: TargetLike, i: int, n: int) -> TargetLike:
    if isinstance(target, Tensor) and target.dim() >= 1 and target.shape[0] == n:
        return target[i:i + 1]
    return target


def meta_saliency(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    saliency: SaliencyFn,
    lr: float = 0.002,
    ascent: bool = False,
) -> Tensor:
    """``saliency`` of each example at the weights after a virtual SGD step on that example.

    Args:
        model: the network (left untouched: parameters, ``.grad``, modes).
        inputs: the examples.
        target: what to explain (and to step towards): a class index, ``(B,)`` classes, ``"predicted"``, a
            per-pixel map or a target callable (:mod:`debugger.saliency.targets`); a callable target gets one
            step for the whole batch, since it cannot be split per example.
        saliency: ``(model, inputs, target) -> map``, e.g. :func:`debugger.saliency.gradient` or
            ``lambda m, x, t: GradCAM(m, "layer4").attribute(x, t)``.
        lr: the virtual step size (``2ε``; 0.002 in the paper).
        ascent: step away from the target (the "degradation" map).

    Shape:
        - inputs: ``(B, C, H, W)``
        - return: what ``saliency`` returns, concatenated over the batch

    Example:
        >>> from debugger.saliency import gradient
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> meta_saliency(net, torch.randn(2, 1, 2, 2), "predicted", gradient).shape
        torch.Size([2, 1, 2, 2])
    """
    n = inputs.shape[0]
    if isinstance(target, str) and target == "predicted":  # fixed by the real weights, before any step
        with attribution_mode(model), torch.no_grad():
            target = model(prepare_input(inputs, model)).argmax(1)
    if callable(target) and not isinstance(target, Tensor):
        return saliency(SteppedModel(model, stepped_parameters(model, inputs, target, lr, ascent)), inputs, target)
    maps = []
    for i in range(n):
        t = _per_example(target, i, n)
        x = inputs[i:i + 1]
        maps.append(saliency(SteppedModel(model, stepped_parameters(model, x, t, lr, ascent)), x, t))
    return torch.cat(maps)


class MetaSaliency:
    """A saliency method evaluated at the weights after one virtual SGD step on each example.

    Args:
        model: the network.
        saliency: ``(model, inputs, target) -> map``.
        lr: the virtual step size.
        ascent: step away from the target instead.

    Example:
        >>> from debugger.saliency import gradient
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> MetaSaliency(net, gradient).attribute(torch.randn(2, 1, 2, 2), 1).shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, model: nn.Module, saliency: SaliencyFn, lr: float = 0.002, ascent: bool = False) -> None:
        if isinstance(lr, bool) or not isinstance(lr, float | int) or lr <= 0:
            raise ValueError(f"Expected `lr` to be a positive number, but got {lr!r}.")
        self.model = model
        self.saliency = saliency
        self.lr = lr
        self.ascent = ascent

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Meta-saliency maps of ``inputs`` for ``target`` (see :func:`meta_saliency`)."""
        return meta_saliency(self.model, inputs, target, self.saliency, self.lr, self.ascent)
