"""Joint batches and batch augmentation in an existing LightningModule, added with one line.

    trainer = Trainer(callbacks=[JointBatchTraining(JointBatch(Cutout(size=8)))])

A Lightning callback cannot replace a batch, so :class:`JointBatchTraining` installs itself on the module it
is set up with (``setup("fit")``) and removes itself in ``teardown``; the module's class and checkpoints are
left alone. It works for ``(x, y)`` sequence batches and contract dict batches alike, with either Lightning
flavour (the callback subclasses both ``Callback`` classes).

**Occluders without saliency** (``Cutout``, ``HideAndSeek``, ``SyntheticShadow``, ``BatchAugment``): the
module's ``on_after_batch_transfer`` is wrapped so that, during training only, the batch it returns is the
grown batch — ``(X, occlude(X))`` for :class:`~augment.JointBatch`, ``M`` augmented copies for
:class:`~augment.BatchAugment` — with targets, concepts, concept masks and every other per-sample tensor
duplicated. The user's ``training_step`` then sees one batch of ``2B`` rows: one forward, one backward, and
the optimizer step takes the gradient of the mean loss over the joint batch (C.1's joint training). Validation,
test and predict batches are untouched.

**Saliency-guided occlusion** (``JointBatch(SaliencyOcclusion(...))`` with ``layer=``): the occlusion of a
sample depends on the current model, so the module's ``training_step`` is wrapped:

1. the user's ``training_step`` runs on the clean batch ``X`` with a forward hook on ``layer``;
2. the clean half's backward runs right away, as ``torch.autograd.grad`` of ``L_clean / 2`` with respect to
   the parameters *and* the captured activation: one backward pass gives the clean half's parameter gradients
   and, on the way, the gradient at the layer, so NormGrad ``‖g_u‖·‖x_u‖`` (with respect to the ground-truth
   label, i.e. the training loss) costs almost nothing extra. Nothing is written to ``param.grad`` here;
3. NormGrad places the ``S × S`` occluders; the user's ``training_step`` runs again on ``X ⊙ M``;
4. the wrapper returns the joint loss ``(L_clean + L_occluded) / 2`` (for logging and for Lightning's
   backward) through a node whose backward also delivers the clean gradients of step 2. Lightning's single
   backward therefore runs the occluded half's backward only, and ``param.grad`` at the optimizer step is
   exactly the gradient of the mean loss over the ``2B`` joint batch — scaled by gradient accumulation and
   AMP like any loss, and accumulated through the normal path that DDP's hooks watch.

What differs from one joint forward of ``2B`` rows: BatchNorm normalises each half with its own batch
statistics (and updates its running statistics twice per step), ``training_step`` runs twice per step (so do
its ``self.log`` calls: a per-step value shows the occluded pass, an epoch mean weighs both), and the clean
half's gradients are one step's worth of extra memory. Being a by-product of the training step, the NormGrad
map comes from the training-mode forward (BatchNorm with batch statistics, dropout active), not from an eval-mode
attribution pass. Manual optimisation is not supported (the wrapper needs Lightning to run the backward).

Per-sample probabilities come from an :class:`~augment.AugmentationPolicy`, evaluated on each batch's targets and
concepts, so the closed loop can target failing classes or concept slices; samples the policy skips keep a clean
second copy, so the batch size stays ``2B``. The policy is ``policy=`` until a
:class:`~callbacks.FailureDrivenAugmentation` on the same trainer publishes one
(:class:`~callbacks.findings.PolicyFinding`); from then on, its policy for this occluder (:attr:`transform`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from augment import AugmentationPolicy, BatchAugment, JointBatch, SaliencyOcclusion, SyntheticShadow
from callbacks._base import _CallbackBase
from callbacks.findings import Need, PolicyFinding, find_producers
from debugger.capture import resolve_layer
from debugger.contract import IMAGE, TARGET, unpack_batch
from debugger.saliency import normgrad_from

OBJECT_MASK = "object_mask"


def _batch_tensors(batch: Any, size: int) -> dict[str, Tensor]:
    """Per-sample tensors of a dict batch besides image and target (concepts, concept masks, object masks, ...)."""
    return {k: v for k, v in batch.items()
            if k not in (IMAGE, TARGET) and isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == size}


def augment_batch(
    batch: Any,
    joint: JointBatch | BatchAugment,
    policy: AugmentationPolicy | None = None,
    **occluder_kwargs: Any,
) -> Any:
    """Grow one batch with ``joint`` and return it in the caller's layout.

    Dict batches keep their keys: per-sample tensors are duplicated with the rows (``index`` of the
    :class:`~augment.AugmentedBatch` says which sample each row comes from), other values are kept as they are.
    Sequence batches ``(x, y, *rest)`` keep their type; tensors in ``rest`` with the batch size are duplicated.
    A dict batch's ``object_mask`` places :class:`~augment.SyntheticShadow` shadows on the object.

    Shape:
        - batch images: ``(B, C, H, W)``
        - output images: ``(2B, C, H, W)`` (``JointBatch``) or ``(M·B, C, H, W)`` (``BatchAugment``)

    Raises:
        ValueError: if the batch is neither a contract dict nor an ``(x, y, ...)`` sequence.

    Example:
        >>> from augment import Cutout
        >>> out = augment_batch((torch.ones(2, 1, 4, 4), torch.tensor([0, 1])), JointBatch(Cutout(size=2)))
        >>> tuple(out[0].shape), out[1].tolist()
        ((4, 1, 4, 4), [0, 1, 0, 1])
    """
    b = unpack_batch(batch)
    n = b.images.shape[0]
    probabilities = policy.probabilities(b.targets, b.concepts) if policy is not None else None
    if isinstance(batch, Mapping):
        extras = _batch_tensors(batch, n)
        occluder = getattr(joint, "occluder", None)
        if isinstance(occluder, SyntheticShadow) and OBJECT_MASK in extras and "object_masks" not in occluder_kwargs:
            occluder_kwargs["object_masks"] = extras[OBJECT_MASK]
        out = joint(b.images, b.targets, extras, probabilities=probabilities, **occluder_kwargs)
        grown = {k: v for k, v in batch.items() if k not in extras}
        grown.update({IMAGE: out.images, TARGET: out.targets, **out.extras})
        return grown
    rest = list(batch[2:])
    extras = {str(i): v for i, v in enumerate(rest) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n}
    out = joint(b.images, b.targets, extras, probabilities=probabilities, **occluder_kwargs)
    items = [out.images, out.targets, *(out.extras.get(str(i), v) for i, v in enumerate(rest))]
    return tuple(items) if isinstance(batch, tuple) else items


_SIGNATURE_SKIP = ("training", "seed")


def augmentation_signature(module: nn.Module) -> str:
    """A stable text description of an augmentation module tree: classes and their scalar settings, no seeds.

    Example:
        >>> from augment import Cutout
        >>> print(augmentation_signature(JointBatch(Cutout(size=8, seed=3)))[:60])
        JointBatch(augment=None, occluder=Cutout(p=1.0, fill='mean',
        >>> augmentation_signature(Cutout(size=8, seed=3)) == augmentation_signature(Cutout(size=8, seed=4))
        True
    """
    parts = []
    for key, value in vars(module).items():
        if key.startswith("_") or key in _SIGNATURE_SKIP:
            continue
        if isinstance(value, list | tuple) and all(isinstance(v, bool | int | float | str) for v in value):
            value = tuple(value)
        elif not isinstance(value, bool | int | float | str | type(None)):
            continue
        parts.append(f"{key}={value!r}")
    for name, child in module.named_children():
        parts.append(f"{name}={augmentation_signature(child)}")
    return f"{type(module).__name__}({', '.join(parts)})"


def _loss_of(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and isinstance(output.get("loss"), Tensor):
        return output["loss"]
    raise ValueError(
        "Expected `training_step` to return a loss tensor or a dict with a 'loss' tensor for saliency-guided "
        f"joint batches, but got {type(output).__name__}."
    )


class _AfterBatchTransfer:
    """Replaces a module's ``on_after_batch_transfer`` while installed (picklable, no closures)."""

    def __init__(self, owner: JointBatchTraining, module: nn.Module, original: Any) -> None:
        self.owner, self.module, self.original = owner, module, original
        # Lightning's `is_overridden` looks through `__wrapped__`, so hook selection sees the original.
        self.__wrapped__ = original

    def __call__(self, batch: Any, dataloader_idx: int) -> Any:
        batch = self.original(batch, dataloader_idx)
        trainer = getattr(self.module, "_trainer", None)
        if trainer is None or not trainer.training:
            return batch
        return augment_batch(batch, self.owner.joint, self.owner.active_policy)


class _AddGradients(torch.autograd.Function):
    """Identity on the loss whose backward also hands precomputed gradients to parameters.

    The clean half's parameter gradients are computed inside ``training_step`` (where Lightning has not yet
    zeroed the old ones), so they cannot be accumulated there; passing them through this node lets Lightning's
    own backward deliver them, scaled like the rest of the loss (gradient accumulation, AMP) and through the
    normal accumulation path that DDP's gradient hooks watch.
    """

    @staticmethod
    def forward(ctx: Any, loss: Tensor, stash: list[Tensor], *params: Tensor) -> Tensor:  # type: ignore[override]
        ctx.stash = stash
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # type: ignore[override]
        return (grad, None, *(grad * g for g in ctx.stash))


class _SaliencyTrainingStep:
    """Replaces a module's ``training_step`` while installed: clean pass + backward, NormGrad, occluded pass."""

    def __init__(self, owner: JointBatchTraining, module: nn.Module, original: Any, layer: nn.Module) -> None:
        self.owner, self.module, self.original, self.layer = owner, module, original, layer
        self.__wrapped__ = original

    def __call__(self, batch: Any, *args: Any, **kwargs: Any) -> Any:
        joint = self.owner.joint
        captured: list[Tensor] = []
        handle = self.layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            clean_out = self.original(batch, *args, **kwargs)
        finally:
            handle.remove()
        clean_loss = _loss_of(clean_out)
        if not captured or not isinstance(captured[-1], Tensor) or not captured[-1].requires_grad:
            raise ValueError(
                f"Expected layer {self.owner.layer!r} to produce a tensor that requires grad in training_step, "
                "but it did not run or has no gradient."
            )
        activation = captured[-1]
        params = [p for p in self.module.parameters() if p.requires_grad]
        # The clean half's whole backward, once: its parameter gradients (delivered by Lightning's backward
        # below) and, on the way, the gradient at the layer that NormGrad needs.
        grads = torch.autograd.grad(0.5 * clean_loss, [activation, *params], allow_unused=True)
        saliency = normgrad_from(activation.detach(), grads[0])[:, 0]
        stash = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads[1:], strict=True)]
        b = unpack_batch(batch)
        policy = self.owner.active_policy
        probabilities = policy.probabilities(b.targets, b.concepts) if policy is not None else None
        occluder: nn.Module = joint.occluder  # type: ignore[assignment]
        occluded, _ = occluder(b.images, saliency=saliency, probabilities=probabilities, return_params=True)
        occluded_out = self.original(_replace_images(batch, occluded), *args, **kwargs)
        joint_loss = 0.5 * (clean_loss.detach() + _loss_of(occluded_out))
        loss = _AddGradients.apply(joint_loss, stash, *params)
        if isinstance(occluded_out, Mapping):
            return {**occluded_out, "loss": loss}
        return loss


def _replace_images(batch: Any, images: Tensor) -> Any:
    if isinstance(batch, Mapping):
        return {**batch, IMAGE: images}
    items = [images, *batch[1:]]
    return tuple(items) if isinstance(batch, tuple) else items


def _defines_hook(obj: Any, name: str) -> bool:
    """Whether ``obj``'s class overrides Lightning's default hook ``name`` (either flavour's ``DataHooks``)."""
    fn = getattr(type(obj), name, None)
    return fn is not None and getattr(fn, "__qualname__", "") != f"DataHooks.{name}"


class JointBatchTraining(_CallbackBase):
    """Train on joint batches ``(X, occlude(X))`` or batch-augmented copies; add it to the Trainer's callbacks.

    Args:
        joint: a :class:`~augment.JointBatch` (with any occluder) or :class:`~augment.BatchAugment`.
        layer: dotted name of the layer whose NormGrad places a :class:`~augment.SaliencyOcclusion` occluder;
            required for saliency occlusion, not allowed otherwise.
        policy: per-sample occlusion probabilities (targets and concepts → ``(B,)``) until a
            FailureDrivenAugmentation publishes policies; None uses the occluder's ``p``.

    Raises:
        ValueError: if ``joint`` is neither ``JointBatch`` nor ``BatchAugment``; if ``layer`` is missing for
            saliency occlusion or given without it; if saliency occlusion is asked of ``BatchAugment``; in
            ``setup`` if ``layer`` is not a layer of the module (listing the nearest names), the module is
            already wrapped by another ``JointBatchTraining``, or it uses manual optimisation with saliency.

    Example:
        >>> from augment import Cutout
        >>> cb = JointBatchTraining(JointBatch(Cutout(size=8)))
        >>> cb.layer is None
        True
    """

    def __init__(
        self,
        joint: JointBatch | BatchAugment,
        layer: str | None = None,
        policy: AugmentationPolicy | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(joint, JointBatch | BatchAugment):
            raise ValueError(f"Expected `joint` to be a JointBatch or a BatchAugment, but got {type(joint).__name__}.")
        saliency = isinstance(getattr(joint, "occluder", None), SaliencyOcclusion)
        if saliency and isinstance(joint, BatchAugment):
            raise ValueError("Expected a JointBatch for saliency occlusion, but got a BatchAugment.")
        if saliency and not isinstance(layer, str):
            raise ValueError(f"Expected `layer` to name the saliency layer for SaliencyOcclusion, but got {layer!r}.")
        if not saliency and layer is not None:
            raise ValueError(f"Expected `layer` to be None for an occluder without saliency, but got {layer!r}.")
        if policy is not None and not isinstance(policy, AugmentationPolicy):
            raise ValueError(f"Expected `policy` to be an AugmentationPolicy or None, but got {type(policy).__name__}.")
        self.joint = joint
        self.layer = layer
        self.policy = policy
        self._policy_source: Any | None = None  # the PolicyFinding producer on the trainer (setup)

    @property
    def saliency_guided(self) -> bool:
        return self.layer is not None

    @property
    def transform(self) -> str:
        """The name a policy for this augmentation goes by: the class of ``joint.occluder`` (or of ``joint``)."""
        occluder = getattr(self.joint, "occluder", None)
        return type(occluder if occluder is not None else self.joint).__name__

    def needs(self) -> tuple[Need, ...]:
        # Read at every training batch, not at an epoch end: the producer may sit anywhere in `callbacks`.
        return (Need(PolicyFinding, required=False, before=False),)

    @property
    def active_policy(self) -> AugmentationPolicy | None:
        """The policy the next training batch uses.

        Once a :class:`~callbacks.FailureDrivenAugmentation` on the trainer has published policies, the one for
        :attr:`transform` (none for it: probability 0, the failures call for other transforms); before that,
        ``policy``.
        """
        found = None if self._policy_source is None else self._policy_source.finding(PolicyFinding)
        if found is None:
            return self.policy
        return found.policies.get(self.transform, AugmentationPolicy(base=0.0, augmentation=self.transform))

    @property
    def state_key(self) -> str:
        """Unique per configuration (the augmentation tree and the layer), so two instances coexist in a checkpoint.

        Seeds are left out: the checkpointed generator states replace them on resume.
        """
        return self._generate_state_key(joint=augmentation_signature(self.joint), layer=self.layer)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        found = find_producers(getattr(trainer, "callbacks", []), self, self.needs())
        self._policy_source = found.get(PolicyFinding)
        if stage == "fit":
            self.install(pl_module, getattr(trainer, "datamodule", None))

    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            self.remove(pl_module, getattr(trainer, "datamodule", None))

    def install(self, module: nn.Module, datamodule: Any = None) -> None:
        """Wrap ``module``'s batch hook (or training step, for saliency occlusion).

        When ``datamodule`` defines its own ``on_after_batch_transfer``, Lightning calls that one instead of the
        module's, so the datamodule's hook is wrapped. Installing twice with the same callback does nothing.
        """
        if self.saliency_guided:
            attr, host = "training_step", module
        else:
            attr = "on_after_batch_transfer"
            host = datamodule if datamodule is not None and _defines_hook(datamodule, attr) else module
        current = host.__dict__.get(attr)
        if isinstance(current, _AfterBatchTransfer | _SaliencyTrainingStep):
            if current.owner is self:
                return
            raise ValueError(f"Expected one JointBatchTraining per module, but {type(module).__name__} is already "
                             "wrapped by another.")
        if self.saliency_guided and getattr(module, "automatic_optimization", True) is False:
            raise ValueError("Expected a module with automatic optimisation for saliency-guided joint batches, "
                             "but got automatic_optimization=False.")
        original = getattr(host, attr)
        if self.saliency_guided:
            layer = resolve_layer(module, self.layer)  # type: ignore[arg-type]
            host.__dict__[attr] = _SaliencyTrainingStep(self, module, original, layer)
        else:
            host.__dict__[attr] = _AfterBatchTransfer(self, module, original)

    def remove(self, module: nn.Module, datamodule: Any = None) -> None:
        """Undo :meth:`install`."""
        for host in (module, datamodule):
            if host is None:
                continue
            for attr in ("training_step", "on_after_batch_transfer"):
                current = host.__dict__.get(attr)
                if isinstance(current, _AfterBatchTransfer | _SaliencyTrainingStep) and current.owner is self:
                    del host.__dict__[attr]

    def state_dict(self) -> dict[str, Any]:
        # The occluders' RNG states, so a resumed run continues the same stream of occlusions.
        return {"generators": [g.get_state() for g in self._generators()]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states: Sequence[Tensor] = state_dict.get("generators", [])
        for g, s in zip(self._generators(), states, strict=False):
            g.set_state(s)

    def _generators(self) -> list[torch.Generator]:
        # Every augmentation module keeps its own CPU generator (created on first use, from its seed).
        out: list[torch.Generator] = []
        for m in self.joint.modules():
            rng = getattr(m, "_rng", None)
            if callable(rng):
                out.append(rng(None))
        return out
