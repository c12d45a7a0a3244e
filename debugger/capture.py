"""Activation capture: forward hooks on named layers, and a streamed runner over batches.

The pure pieces are :func:`resolve_layer` (a dotted name to a module, with a helpful error) and
:func:`reduce_activation` (spatial pooling and storage dtype). :class:`ActivationCapture` is the context
manager that puts hooks on and always takes them off; :func:`capture` runs one forward under it, and
:func:`stream_capture` / :func:`run_capture` walk a loader in chunks of bounded size, returning
activations together with the predictions and correctness of the very same forward pass.

Nothing here disturbs a model that is training (:func:`preserve_training_mode` is the one guard for that, also
used by the callbacks): the train/eval flag of every submodule is restored,
forwards run under ``torch.no_grad()`` (so no ``param.grad`` is ever touched) and the callers may
themselves be inside ``torch.inference_mode()``.
"""

from __future__ import annotations

import contextlib
import difflib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from debugger.contract import unpack_batch

Reduce = Literal["none", "mean", "max"]

__all__ = [
    "ActivationCapture",
    "CaptureResult",
    "capture",
    "first_tensor",
    "layer_names",
    "model_device",
    "model_input",
    "predictions_from_logits",
    "preserve_training_mode",
    "reduce_activation",
    "resolve_layer",
    "run_capture",
    "stream_capture",
]


def layer_names(model: nn.Module) -> list[str]:
    """The dotted names of every submodule of ``model`` (the root, named ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the submodule of ``model`` called ``name`` (a dotted name from ``named_modules()``).

    Every ``layer=`` / ``layers=`` option of the debugger and the callbacks resolves here, so the error names
    ``layer``, the option the user set.

    Raises:
        ValueError: if no submodule has that name; the message lists the nearest valid names.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> resolve_layer(net, "1")
        ReLU()
    """
    if not isinstance(name, str):
        raise ValueError(f"Expected `layer` to be a dotted layer name (str), but got {name!r}.")
    if name:
        try:  # an attribute walk: much cheaper than listing every module, and the same names
            return model.get_submodule(name)
        except AttributeError:
            pass
    modules = dict(model.named_modules())
    valid = [n for n in modules if n]
    near = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
    hint = near if near else valid[:10]
    raise ValueError(
        f"Expected `layer` to be a layer of {type(model).__name__} (a dotted name from named_modules()), "
        f"but got {name!r}. Nearest valid names: {hint!r}."
    )


def reduce_activation(activation: Tensor, reduce: Reduce = "none", dtype: torch.dtype | None = None) -> Tensor:
    """Pool an activation over its spatial dimensions and cast it for storage.

    ``"mean"``/``"max"`` pool every dimension after the channel one (``(B, D, ...)`` → ``(B, D)``);
    a ``(B, D)`` activation is returned unchanged. ``dtype`` (e.g. ``torch.float16``) halves storage.

    Shape:
        - activation: ``(B, D, *spatial)``
        - output: ``(B, D)`` when reduced, else like the input

    Raises:
        ValueError: if ``reduce`` is not one of the options, or the activation has fewer than 2 dimensions.

    Example:
        >>> reduce_activation(torch.arange(8.).view(1, 2, 2, 2), "mean")
        tensor([[1.5000, 5.5000]])
    """
    if reduce not in ("none", "mean", "max"):
        raise ValueError(f"Expected `reduce` to be one of 'none', 'mean', 'max', but got {reduce!r}.")
    out = activation
    if reduce != "none":
        if out.dim() < 2:
            raise ValueError(
                f"Expected an activation of shape (B, D, ...) to pool, but got {tuple(out.shape)!r}."
            )
        if out.dim() > 2:
            flat = out.flatten(2)
            out = flat.mean(dim=2) if reduce == "mean" else flat.amax(dim=2)
    if dtype is not None:
        out = out.to(dtype)
    return out


def first_tensor(output: Any, where: str) -> Tensor:
    """The tensor in a module's output: the output itself, the first item of a tuple/list, or a dict's
    ``"logits"`` / ``"out"`` entry (the forms common classification and segmentation models return).

    Args:
        output: what a module (or its forward hook) returned.
        where: how to name the output in the error message.

    Raises:
        ValueError: if no tensor is found there.

    Example:
        >>> first_tensor((torch.zeros(2), "aux"), "the output").shape
        torch.Size([2])
    """
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, dict):
        for key in ("logits", "out"):
            if isinstance(output.get(key), Tensor):
                return output[key]
    if isinstance(output, dict):
        got = f"a dict with keys {sorted(map(str, output))!r}"
    elif isinstance(output, (tuple, list)):
        got = f"a {type(output).__name__} of {[type(o).__name__ for o in output]!r}"
    else:
        got = type(output).__name__
    raise ValueError(
        f"Expected {where} to be a Tensor, a tuple/list starting with one, or a dict with a 'logits' or 'out' "
        f"tensor, but got {got}; return the class scores first (or under 'logits') to analyse them."
    )


@contextmanager
def preserve_training_mode(
    model: nn.Module,
    eval_mode: bool = True,
    enable_grad: bool = False,
    fork_rng: bool = False,
) -> Iterator[nn.Module]:
    """Leave training untouched: the one guard every analysis beside a training run goes through.

    Puts ``model`` in eval mode (optionally) and restores every submodule's own flag afterwards —
    ``model.train(was)`` is not enough: a caller may have frozen some submodules in eval mode (e.g. BatchNorm in
    a fine-tuned backbone) — and puts every ``param.grad`` back as it was (analyses take gradients with
    ``torch.autograd.grad``; this is the last line of defence).

    ``enable_grad`` also leaves ``torch.inference_mode`` and turns grad on, for analyses that need gradients
    while Lightning validates under ``inference_mode``. ``fork_rng`` restores the torch (CPU and current CUDA
    device), numpy and python RNG states afterwards, so a seeded training run draws the same numbers with and
    without the analysis; leave it off around a generator that yields to its caller (the caller's draws would be
    undone).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> _ = net[1].eval()  # frozen by the user
        >>> with torch.inference_mode(), preserve_training_mode(net, enable_grad=True, fork_rng=True):
        ...     net.training, torch.is_grad_enabled()
        (False, True)
        >>> net.training, net[1].training
        (True, False)
    """
    # Walked without model.modules(): its memo set hashes every module, and a torchmetrics Metric's __hash__
    # hashes its state, a visible share of a saliency call (bench_saliency_speed).
    saved = [(m, m.training) for m in _walk(model)]
    grads = [(p, p.grad) for p in model.parameters()]
    with contextlib.ExitStack() as stack:
        if fork_rng:
            np_state, py_state = np.random.get_state(), random.getstate()
            stack.callback(random.setstate, py_state)
            stack.callback(np.random.set_state, np_state)
            devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            stack.enter_context(torch.random.fork_rng(devices=devices))
        # only the modes that are on are left: each context manager adds per-call overhead
        if enable_grad and torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
        if enable_grad and not torch.is_grad_enabled():
            stack.enter_context(torch.enable_grad())
        try:
            if eval_mode:
                for m, flag in saved:
                    if flag:
                        m.training = False
            yield model
        finally:
            for m, flag in saved:
                m.training = flag
            for p, g in grads:
                p.grad = g


def _walk(model: nn.Module) -> Iterator[nn.Module]:
    """Every submodule, depth first, without a memo set (a shared module may come twice; harmless here)."""
    stack = [model]
    while stack:
        m = stack.pop()
        yield m
        stack.extend(c for c in m._modules.values() if c is not None)


class ActivationCapture:
    """A context manager that records the outputs of named layers on every forward.

    Hooks go on in ``__enter__`` and come off in ``__exit__`` (also when the forward raises). After each
    forward, :attr:`activations` maps every layer name to its latest output (detached, reduced, cast);
    nothing is accumulated across forwards, so memory stays at one batch.

    Args:
        model: the network to observe (left untouched: no mode changes, no grads).
        layers: one dotted layer name or several.
        reduce: spatial pooling applied in the hook (``"none"`` keeps the full map).
        dtype: storage dtype, e.g. ``torch.float16``; None keeps the layer's dtype.
        detach: detach the stored outputs; set False to take ``torch.autograd.grad`` w.r.t. them.

    Raises:
        ValueError: on an unknown layer name (listing the nearest valid names) or an empty ``layers``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten())
        >>> with ActivationCapture(net, "0", reduce="mean") as cap:
        ...     _ = net(torch.zeros(2, 3, 8, 8))
        >>> tuple(cap.activations["0"].shape)
        (2, 4)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        reduce: Reduce = "none",
        dtype: torch.dtype | None = None,
        detach: bool = True,
    ) -> None:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise ValueError(f"Expected `layers` to name at least one layer, but got {layers!r}.")
        if reduce not in ("none", "mean", "max"):
            raise ValueError(f"Expected `reduce` to be one of 'none', 'mean', 'max', but got {reduce!r}.")
        self.model = model
        self.layers = names
        self.reduce: Reduce = reduce
        self.dtype = dtype
        self.detach = detach
        # Resolved eagerly so a typo fails before any forward; resolving registers nothing.
        self._modules = {name: resolve_layer(model, name) for name in names}
        self._handles: list[RemovableHandle] = []
        self.activations: dict[str, Tensor] = {}

    def _hook(self, name: str):  # noqa: ANN202 - a closure over the layer name
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            t = first_tensor(output, f"the output of layer {name!r}")
            if self.detach:
                t = t.detach()
            self.activations[name] = reduce_activation(t, self.reduce, self.dtype)

        return hook

    def __enter__(self) -> ActivationCapture:
        self.activations = {}
        try:
            for name, module in self._modules.items():
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self.remove()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Take every hook off (idempotent)."""
        while self._handles:
            self._handles.pop().remove()

    def clear(self) -> None:
        """Forget the stored activations."""
        self.activations = {}



class LayerCapture:
    """Context manager recording the output (and optionally the input) of named layers during a forward, inside the
    autograd graph: the capture that gradient methods (saliency, TCAV derivatives) differentiate with respect to.

    When a module runs more than once in one forward (a shared ReLU), the last call is kept. The recorded
    output is returned to the network as a clone, so in-place operations downstream (``ReLU(inplace=True)``)
    cannot overwrite the captured tensor or the version autograd needs.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> with LayerCapture(net, ["0"]) as cap:
        ...     _ = net(torch.zeros(1, 1, 5, 5))
        >>> tuple(cap.outputs["0"].shape)
        (1, 2, 3, 3)
    """

    def __init__(self, model: nn.Module, layers: Sequence[str], inputs: bool = False) -> None:
        self.model = model
        self.layers = list(layers)
        self.keep_inputs = inputs
        self.outputs: dict[str, Tensor] = {}
        self.inputs: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Any, ...], Any], Any]:
        def hook(_module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
            if not isinstance(out, Tensor):
                raise ValueError(f"Expected layer {name!r} to output a tensor, but got {type(out).__name__}.")
            if not out.requires_grad and torch.is_grad_enabled():
                # A frozen network (no parameter requires grad) still gets gradients w.r.t. this layer.
                out = out.detach().requires_grad_(True)
            self.outputs[name] = out
            if self.keep_inputs:
                self.inputs[name] = args[0]
            return out.clone()

        return hook

    def __enter__(self) -> LayerCapture:
        modules = [resolve_layer(self.model, n) for n in self.layers]
        try:
            for name, module in zip(self.layers, modules, strict=True):
                self._handles.append(module.register_forward_hook(self._hook(name)))
        except BaseException:
            self._remove()
            raise
        return self

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __exit__(self, *exc: object) -> None:
        self._remove()


def capture(
    model: nn.Module,
    layers: str | Sequence[str],
    images: Tensor,
    reduce: Reduce = "none",
    dtype: torch.dtype | None = None,
    eval_mode: bool = True,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Run one forward of ``model`` on ``images`` and return its output and the named layers' activations.

    Runs under ``torch.no_grad()`` with the model in eval mode (each submodule's flag is restored).

    Shape:
        - images: ``(B, C, H, W)``
        - output: whatever the model returns for the batch (its first tensor)

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
        >>> out, acts = capture(net, ["0", "1"], torch.zeros(1, 3, 5, 5), reduce="max")
        >>> tuple(out.shape), tuple(acts["1"].shape)
        ((1, 4, 3, 3), (1, 4))
    """
    with preserve_training_mode(model, eval_mode), ActivationCapture(model, layers, reduce, dtype) as cap:
        with torch.no_grad():
            output = first_tensor(model(model_input(model, images)), "the model's output")
        acts = dict(cap.activations)
    return output, acts


def predictions_from_logits(logits: Tensor) -> Tensor:
    """Class predictions from logits: argmax over dim 1, or a 0 threshold for one-logit binary outputs.

    Shape:
        - logits: ``(B, C)``, ``(B,)``/``(B, 1)`` (binary) or ``(B, C, H, W)`` (segmentation)
        - output: ``(B,)`` or ``(B, H, W)`` int64
    """
    if logits.dim() == 1 or (logits.dim() == 2 and logits.shape[1] == 1):
        return (logits.reshape(logits.shape[0]) > 0).long()
    if logits.dim() < 2:
        raise ValueError(f"Expected logits of shape (B, C) or (B, C, H, W), but got {tuple(logits.shape)!r}.")
    return logits.argmax(dim=1)


@dataclass
class CaptureResult:
    """What one streamed pass over a probe set returns (everything on CPU).

    Shape:
        - activations: ``{layer: (N, D, ...)}`` or ``(N, D)`` when reduced
        - predictions: ``(N,)`` or ``(N, H, W)`` int64
        - targets: like predictions
        - correct: like predictions, bool
        - logits: ``(N, C, ...)`` when kept, else None
        - images: ``(N, C, H, W)`` when kept, else None
        - concepts: ``(N, K)`` when the batches had them
        - concept_masks: ``(N, K, H, W)`` when the batches had them
    """

    activations: dict[str, Tensor]
    predictions: Tensor
    targets: Tensor
    correct: Tensor
    logits: Tensor | None = None
    images: Tensor | None = None
    concepts: Tensor | None = None
    concept_masks: Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.predictions.shape[0])

    @property
    def accuracy(self) -> float:
        """Fraction of correct samples (pixels for segmentation)."""
        return float(self.correct.float().mean()) if self.correct.numel() else float("nan")


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (or buffer); CPU for a model with neither.

    Example:
        >>> model_device(nn.Linear(2, 2))
        device(type='cpu')
    """
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def model_input(model: nn.Module, x: Tensor, copy: bool = False) -> Tensor:
    """``x`` on ``model``'s device and in its floating-point parameter dtype, ready to be forwarded.

    Every forward of probe images in the debugger goes through here, so a model trained with
    ``precision="bf16-true"`` (bf16 weights) or in half precision takes the float32 probes a dataset gives.
    Non-float inputs (token ids, masks) only move device.

    Shape:
        - x: any; output: like ``x``

    Example:
        >>> net = nn.Linear(2, 2).to(torch.bfloat16)
        >>> model_input(net, torch.zeros(1, 2)).dtype
        torch.bfloat16
    """
    device = model_device(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if dtype is None or not x.is_floating_point():
        return x.to(device=device, copy=copy)
    return x.to(device=device, dtype=dtype, copy=copy)


def stream_capture(
    model: nn.Module,
    layers: str | Sequence[str],
    batches: Iterable[Any],
    reduce: Reduce = "none",
    dtype: torch.dtype | None = None,
    chunk_size: int = 64,
    keep_logits: bool = False,
    keep_images: bool = False,
    eval_mode: bool = True,
    max_samples: int | None = None,
) -> Iterator[CaptureResult]:
    """Walk ``batches`` and yield one :class:`CaptureResult` per chunk of at most ``chunk_size`` samples.

    Each incoming batch (a contract dict or ``(x, y)``, read by :func:`debugger.contract.unpack_batch`) is
    split into chunks so that one forward never holds more than ``chunk_size`` samples; the results are
    moved to CPU (reduced and cast first) before the next chunk runs, so peak memory is one chunk plus
    whatever the caller keeps. Predictions and correctness come from the same forward as the activations.
    The model's train/eval flags are restored when the generator finishes or is closed.

    Raises:
        ValueError: on an unknown layer (at the first iteration), a non-positive ``chunk_size``, a malformed
            batch, or predictions whose shape does not match the targets.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> data = [(torch.randn(5, 3, 2, 2), torch.zeros(5, dtype=torch.long))]
        >>> [len(r) for r in stream_capture(net, "1", data, chunk_size=2)]
        [2, 2, 1]
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` to be a positive integer, but got {chunk_size!r}.")
    if max_samples is not None and max_samples < 0:
        raise ValueError(f"Expected `max_samples` to be None or non-negative, but got {max_samples!r}.")
    cap = ActivationCapture(model, layers, reduce, dtype)
    seen = 0
    with preserve_training_mode(model, eval_mode), cap:
        for raw in batches:
            batch = unpack_batch(raw)
            n = batch.images.shape[0]
            for start in range(0, n, chunk_size):
                if max_samples is not None and seen >= max_samples:
                    return
                stop = min(start + chunk_size, n)
                if max_samples is not None:
                    stop = min(stop, start + max_samples - seen)
                images = batch.images[start:stop]
                cap.clear()
                with torch.no_grad():
                    logits = first_tensor(model(model_input(model, images)), "the model's output")
                missing = [name for name in cap.layers if name not in cap.activations]
                if missing:
                    raise ValueError(
                        f"Expected every captured layer to run in the forward pass, but got no output from {missing!r}."
                    )
                preds = predictions_from_logits(logits).cpu()
                targets = batch.targets[start:stop].cpu()
                if preds.shape != targets.shape:
                    raise ValueError(
                        f"Expected predictions of shape {tuple(targets.shape)!r} like the targets, "
                        f"but got {tuple(preds.shape)!r}."
                    )
                seen += stop - start
                yield CaptureResult(
                    activations={k: v.cpu() for k, v in cap.activations.items()},
                    predictions=preds,
                    targets=targets,
                    correct=preds == targets,
                    logits=logits.detach().cpu() if keep_logits else None,
                    images=images.detach().cpu() if keep_images else None,
                    concepts=None if batch.concepts is None else batch.concepts[start:stop].cpu(),
                    concept_masks=None if batch.concept_masks is None else batch.concept_masks[start:stop].cpu(),
                )


def _cat(parts: list[Tensor | None]) -> Tensor | None:
    if not parts or any(p is None for p in parts):
        return None
    return torch.cat([p for p in parts if p is not None])


def run_capture(
    model: nn.Module,
    layers: str | Sequence[str],
    batches: Iterable[Any],
    reduce: Reduce = "none",
    dtype: torch.dtype | None = None,
    chunk_size: int = 64,
    keep_logits: bool = False,
    keep_images: bool = False,
    eval_mode: bool = True,
    max_samples: int | None = None,
) -> CaptureResult:
    """Collect :func:`stream_capture` over a whole probe set into one :class:`CaptureResult`.

    Use ``reduce``/``dtype`` to bound what is kept (e.g. ``reduce="mean", dtype=torch.float16`` keeps
    ``2·D`` bytes per sample and layer); iterate :func:`stream_capture` yourself to keep nothing.

    Raises:
        ValueError: if the batches hold no samples (an empty probe set), or as :func:`stream_capture`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> data = [(torch.randn(4, 3, 2, 2), torch.zeros(4, dtype=torch.long))]
        >>> r = run_capture(net, "1", data)
        >>> tuple(r.activations["1"].shape), tuple(r.correct.shape)
        ((4, 3), (4,))
    """
    chunks = list(
        stream_capture(model, layers, batches, reduce, dtype, chunk_size, keep_logits, keep_images, eval_mode,
                       max_samples)
    )
    if not chunks:
        raise ValueError("Expected the probe set to hold at least one sample, but got an empty iterable of batches.")
    acts = {name: torch.cat([c.activations[name] for c in chunks]) for name in chunks[0].activations}
    return CaptureResult(
        activations=acts,
        predictions=torch.cat([c.predictions for c in chunks]),
        targets=torch.cat([c.targets for c in chunks]),
        correct=torch.cat([c.correct for c in chunks]),
        logits=_cat([c.logits for c in chunks]),
        images=_cat([c.images for c in chunks]),
        concepts=_cat([c.concepts for c in chunks]),
        concept_masks=_cat([c.concept_masks for c in chunks]),
    )
