"""Does the closed loop fix the failure it finds, and is the fix more than memorising our shadow renderer?

For every seed: train the baseline (no augmentation), diagnose it (discovered + annotated failure concepts),
derive the policy, then fine-tune three copies of the same baseline with the same budget (epochs, steps, joint
batch size where augmenting):

- ``loop``: joint batches, the derived policy (shadow failures → ``SyntheticShadow`` on the failing classes);
- ``no_aug``: plain batches, no augmentation;
- ``untargeted``: joint batches, every transform (SyntheticShadow, Cutout, HideAndSeek) on every sample with
  one uniform probability, chosen so the expected share of augmented samples equals the loop's.

Only when asked (``--arms``), a second reading of the untargeted control:

- ``untargeted_oneof``: joint batches, each sample augmented with the loop's share as probability and then by
  exactly ONE of the same transforms chosen uniformly (RandAugment / albumentations ``OneOf`` style,
  :class:`augment.OneOfUniform`), so about a third of the augmented samples get a shadow, never stacked.

Measured on the test split: accuracy on the planted-shadow slice, on clean images (no planted concept) and
overall; and on clean test images shadowed by albumentations' ``RandomShadow`` (a renderer neither the data nor
the loop uses). Road scenes (segmentation): per-class IoU on shadowed and unshadowed test images, before/after.

Every arm fine-tunes at ``--lr`` (default 3e-3, the models' own training rate; chosen on the validation split of
seed 0 — 1e-3 barely moved the model in 3 epochs) with a fresh AdamW and a cosine schedule.

The loop's shadow strength is calibrated from the failure by default (``SyntheticShadow`` ``intensity`` = the
darkening measured under the shadow masks of the diagnosis's probe images, :func:`recipes.loop.loop_policies`);
``--no-calibrate`` keeps the default 40–75% for the loop too (the earlier recordings). The untargeted control
always uses the default transforms: it does not know the failure. Settings are chosen with ``--eval-split val``
(every metric on the validation split instead of test; its results file ends in ``_val``).

Two ablations of the loop arm only (the controls are unchanged): ``--loop-shadow-kind`` (and
``--loop-shadow-blobs``) draws the loop's shadows with another ``SyntheticShadow`` shape than ``line`` — is
matching the failing shadows' shape worth it? — and ``--aug-loss-weight`` weights the augmented half of the
loop's joint batches in the training loss (the clean half keeps weight 1; the loss is normalised by the total
weight). On seed 0's validation split neither helped (``benchmarks/README.md``), so neither is the default.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_loop --dataset planted --seeds 3
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from augment import AugmentationPolicy  # noqa: E402
from benchmarks.harness import mean_std, record  # noqa: E402
from recipes.baseline import slice_metrics  # noqa: E402
from recipes.data.base import generator_digest  # noqa: E402
from recipes.loop import (  # noqa: E402
    RunDirectory,
    default_transforms,
    diagnose,
    finetune,
    headline,
    load_model,
    loop_policies,
    mean_probability,
    save_model,
    train,
    uniform_policies,
)
from recipes.models import ResNetClassifier, SegmentationNet  # noqa: E402


def make_data(dataset: str, seed: int, quick: bool, test_size: int = 2000) -> Any:
    from recipes.data import FashionMNISTDataModule, PlantedConceptsDataModule, RoadScenesDataModule

    if dataset == "planted":
        n = 1500 if quick else 6000
        return PlantedConceptsDataModule(train_size=n, val_size=500, test_size=test_size, seed=seed)
    if dataset == "fashion":
        n = 1500 if quick else 6000
        return FashionMNISTDataModule(planted=True, train_size=n, val_size=1000, test_size=test_size, seed=seed)
    if dataset == "roads":
        # 32 x 64 scenes: a segmentation net costs many times a 32-px classifier per image on a CPU.
        n = 200 if quick else 500
        return RoadScenesDataModule(height=32, train_size=n, val_size=100, test_size=200, batch_size=32, seed=seed)
    raise SystemExit(f"unknown dataset {dataset!r}")


def random_shadow_set(dataset: Any, seed: int, limit: int = 1000) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Test images without any planted concept, and the same images shadowed by albumentations' RandomShadow."""
    import albumentations as A

    transform = A.Compose([A.RandomShadow(shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 2), shadow_dimension=5,
                                          shadow_intensity_range=(0.4, 0.7), p=1.0)], seed=seed)
    clean, shadowed, targets = [], [], []
    for i in range(len(dataset)):
        s = dataset[i]
        if float(s["concepts"].sum()) > 0:
            continue
        x = s["image"]
        img = x.permute(1, 2, 0).numpy().astype(np.float32)
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        out = transform(image=img)["image"]
        y = torch.from_numpy(np.ascontiguousarray(out)).permute(2, 0, 1).float()
        if x.shape[0] == 1:
            y = y.mean(0, keepdim=True)
        clean.append(x)
        shadowed.append(y.clamp(0, 1))
        targets.append(s["target"])
        if len(clean) >= limit:
            break
    return torch.stack(clean), torch.stack(shadowed), torch.stack(targets)


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> float:
    model.eval()
    preds = torch.cat([model(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])
    return float((preds == targets).float().mean())


def eval_dataset(dataset: str, dm: Any, split: str, val_size: int | None) -> Any:
    """The split every metric is read from; for ``val`` on planted data optionally a longer validation split
    (same seed and split, drawn afresh at that size: a few hundred validation images measure clean accuracy to
    about ±1 point, too coarse to choose settings by)."""
    if split == "val" and val_size is not None:
        if dataset != "planted":
            raise SystemExit("Expected `--val-eval-size` only with `--dataset planted` (Fashion-MNIST's validation "
                             "images are carved from the training file: a longer split would overlap training).")
        from recipes.data import PlantedConceptsDataModule

        return PlantedConceptsDataModule(train_size=dm.sizes["train"], val_size=val_size, test_size=dm.sizes["test"],
                                         seed=dm.seed).dataset("val")
    return dm.dataset(split)


def evaluate(model: torch.nn.Module, data: Any, extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
             ) -> dict[str, Any]:
    m = slice_metrics(model, data)
    if isinstance(m["all"], dict):  # segmentation
        return {"all": m["all"], "shadow_with": m["shadow"]["with"], "shadow_without": m["shadow"]["without"],
                "miou_all": headline(m["all"]), "miou_shadow": headline(m["shadow"]["with"]),
                "miou_no_shadow": headline(m["shadow"]["without"])}
    out = {"all": m["all"], "clean": m["clean"], "shadow": m["shadow"]["with"],
           "no_shadow": m["shadow"]["without"]}
    if "occluder" in m:
        out["occluder"] = m["occluder"]["with"]
    if extra is not None:
        clean, shadowed, targets = extra
        out["rs_clean"] = accuracy(model, clean, targets)
        out["rs_shadowed"] = accuracy(model, shadowed, targets)
    return out


ARMS = ("loop", "no_aug", "untargeted")
# Arms run only when named in --arms; the default set stays ARMS.
OPTIONAL_ARMS = ("untargeted_oneof",)
ALL_ARMS = (*ARMS, *OPTIONAL_ARMS)
ONE_OF = "OneOfUniform"


def oneof_transforms(image_size: int, seed: int = 0) -> dict[str, torch.nn.Module]:
    """``default_transforms`` plus, under :data:`ONE_OF`, one :class:`~augment.OneOfUniform` over all of them."""
    from augment import OneOfUniform

    transforms = default_transforms(image_size, seed)
    return {**transforms, ONE_OF: OneOfUniform(list(transforms.values()), p=1.0, seed=seed + 3)}


def with_shadow_shape(policies: dict[str, Any], kind: str | None, blobs: int | None) -> dict[str, Any]:
    """The loop's policies with its ``SyntheticShadow`` drawn as ``kind`` (with ``blobs`` ellipses for canopy)."""
    from dataclasses import replace

    extra: dict[str, Any] = {}
    if kind is not None:
        extra["kind"] = kind
    if blobs is not None:
        extra["blobs"] = blobs
    if not extra or "SyntheticShadow" not in policies:
        return policies
    shadow = policies["SyntheticShadow"]
    return {**policies, "SyntheticShadow": replace(shadow, params={**dict(shadow.params), **extra})}


def weight_augmented_half(model: Any, weight: float) -> Any:
    """``model`` whose training loss counts the second (augmented) half of each joint batch ``weight`` times.

    Only while training: validation batches are not joint and keep the plain mean.
    """
    import torch.nn.functional as F

    plain = model.loss

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not model.training or weight == 1.0:
            return plain(logits, targets)  # type: ignore[no-any-return]
        per = F.cross_entropy(logits, targets, reduction="none").flatten(1).mean(1) if targets.dim() > 1 else \
            F.cross_entropy(logits, targets, reduction="none")
        w = torch.ones_like(per)
        w[len(per) // 2:] = weight
        return (per * w).sum() / w.sum()

    model.loss = loss
    return model


def run_seed(dataset: str, seed: int, epochs: int, ft_epochs: int, quick: bool, probe_size: int = 128,
             lr: float = 3e-3, base_p: float = 0.3, max_p: float = 0.9, calibrate: bool = True,
             split: str = "test", arms: tuple[str, ...] = ARMS, baseline_cache: str | None = None,
             val_eval_size: int | None = None, test_size: int = 2000, loop_shadow_kind: str | None = None,
             loop_shadow_blobs: int | None = None, aug_loss_weight: float = 1.0) -> dict[str, Any]:
    torch.manual_seed(seed)
    dm = make_data(dataset, seed, quick, test_size)
    seg = dataset == "roads"
    torch.manual_seed(seed)  # the initialisation must not depend on what loading the data consumed
    model = (SegmentationNet(num_classes=dm.num_classes) if seg
             else ResNetClassifier(num_classes=dm.num_classes, in_channels=dm.in_channels))
    clock = time.time()
    # keyed by the data generator's code too: a changed generator must not be served a model of the older data
    digest = generator_digest(type(dm.dataset("train")))
    cached = (os.path.join(baseline_cache,
                           f"{dataset}{'_quick' if quick else ''}_seed{seed}_e{epochs}_{digest}.ckpt")
              if baseline_cache else None)
    if cached is not None and os.path.exists(cached):
        model = load_model(cached, model)
    else:
        model = train(model, dm, epochs, None, "train", (), seed)
        if cached is not None:
            save_model(model, cached)
    times = {"baseline_s": time.time() - clock}
    data = eval_dataset(dataset, dm, split, val_eval_size)
    extra = None if seg else random_shadow_set(data, seed)
    result: dict[str, Any] = {"seed": seed, "baseline": evaluate(model, data, extra)}
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDirectory(tmp)
        clock = time.time()
        d = diagnose(model, dm, None, run, "report", probe_size=probe_size, seed=seed, metrics_split=None)
        policies, evidence = loop_policies(d, base=base_p, max_p=max_p, calibrate=calibrate)
        policies = with_shadow_shape(policies, loop_shadow_kind, loop_shadow_blobs)
        times["diagnose_s"] = time.time() - clock
    result["darkening"] = d.annotated.to_dict()["darkening"] if d.annotated is not None else {}
    result["evidence"] = evidence
    result["policies"] = {k: v.to_dict() for k, v in policies.items()}
    sample = dm.dataset("train")[0]["image"]
    names = list(default_transforms(int(min(sample.shape[-2:]))))
    p_any = mean_probability(policies, dm.dataset("train"))
    p_each = 1 - (1 - p_any) ** (1 / len(names)) if p_any > 0 else 0.0
    result["augmented_share"] = p_any
    arm_policies = {
        "loop": policies,
        "no_aug": {},
        "untargeted": uniform_policies(names, p_each),
        "untargeted_oneof": {ONE_OF: AugmentationPolicy(base=p_any, augmentation=ONE_OF)},
    }
    for arm in arms:
        clock = time.time()
        # finetune applies the loop policy's calibrated params; the controls' policies carry none.
        start = copy.deepcopy(model)
        if arm == "loop" and aug_loss_weight != 1.0:
            start = weight_augmented_half(start, aug_loss_weight)
        make_transforms = oneof_transforms if arm == "untargeted_oneof" else default_transforms
        tuned = finetune(start, dm, arm_policies[arm], ft_epochs, lr,
                         make_transforms(int(min(sample.shape[-2:])), seed), None, arm, seed=seed)
        times[f"{arm}_s"] = time.time() - clock
        result[arm] = evaluate(tuned, data, extra)
        print(f"  seed {seed} {arm}: {_short(result[arm])}", flush=True)
    result["times"] = times
    print(f"  seed {seed} baseline: {_short(result['baseline'])}", flush=True)
    return result


def _short(m: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, float))


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    arms = [a for a in ALL_ARMS if a in per_seed[0]]
    keys = [k for k, v in per_seed[0]["baseline"].items() if isinstance(v, float)]
    out: dict[str, Any] = {}
    for arm in ("baseline", *arms):
        out[arm] = {k: mean_std([r[arm][k] for r in per_seed]) for k in keys}
    for arm in arms:
        out[f"{arm}_minus_baseline"] = {k: mean_std([r[arm][k] - r["baseline"][k] for r in per_seed]) for k in keys}
    for control in ("no_aug", "untargeted", "untargeted_oneof"):
        if "loop" in arms and control in arms:
            out[f"loop_minus_{control}"] = {k: mean_std([r["loop"][k] - r[control][k] for r in per_seed])
                                            for k in keys}
    return out


def _data_settings(dataset: str) -> dict[str, Any]:
    if dataset != "fashion":
        return {}
    from recipes.data.fashion import FASHION_SHADOW

    return {"fashion_shadow": FASHION_SHADOW}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("planted", "fashion", "roads"), default="planted")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--test-size", type=int, default=2000,
                        help="test images (planted/fashion; the first 2000 are the default test set): ~25%% of the "
                             "planted ones are clean, so 2000 resolve the clean accuracy only to about ±0.5 point")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=3)
    parser.add_argument("--probe-size", type=int, default=128, help="validation images the diagnosis analyses")
    parser.add_argument("--lr", type=float, default=3e-3, help="fine-tuning learning rate (every arm)")
    parser.add_argument("--base-p", type=float, default=0.3, help="the loop policy's probability for other samples")
    parser.add_argument("--max-p", type=float, default=0.9, help="the loop policy's probability for a class "
                        "failing only inside a concept's slice")
    parser.add_argument("--quick", action="store_true", help="small data, for trying the script")
    parser.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                        help="the loop's SyntheticShadow keeps the default intensity instead of the measured one")
    parser.add_argument("--eval-split", choices=("test", "val"), default="test",
                        help="split every metric is measured on (val: for choosing settings)")
    parser.add_argument("--val-eval-size", type=int, default=None,
                        help="with --eval-split val on planted data: measure on this many validation images")
    parser.add_argument("--arms", nargs="+", default=list(ARMS),
                        help=f"subset of {ALL_ARMS}, comma- or space-separated (default: {ARMS})")
    parser.add_argument("--seed-offset", type=int, default=0, help="first seed")
    parser.add_argument("--baseline-cache", default=None,
                        help="folder to keep/reuse the trained baselines in (same seed, epochs and data "
                             "generator code → same model)")
    parser.add_argument("--loop-shadow-kind", choices=("line", "polygon", "canopy"), default=None,
                        help="ablation: the shape of the loop's SyntheticShadow (default: the transform's, line)")
    parser.add_argument("--loop-shadow-blobs", type=int, default=None,
                        help="ablation: ellipses per canopy shadow in the loop (SyntheticShadow's blobs, default 4)")
    parser.add_argument("--aug-loss-weight", type=float, default=1.0,
                        help="ablation: loss weight of the augmented half of the loop's joint batches")
    parser.add_argument("--tag", default="", help="suffix for the results file name")
    args = parser.parse_args()
    arms = tuple(a for item in args.arms for a in item.split(",") if a)
    if not arms or any(a not in ALL_ARMS for a in arms):
        raise SystemExit(f"Expected `--arms` to be a subset of {ALL_ARMS}, but got {args.arms!r}.")
    if args.loop_shadow_blobs is not None and args.loop_shadow_blobs < 1:
        raise SystemExit("Expected `--loop-shadow-blobs` to be a positive integer, but got "
                         f"{args.loop_shadow_blobs!r}.")
    if not args.aug_loss_weight > 0:
        raise SystemExit(f"Expected `--aug-loss-weight` to be positive, but got {args.aug_loss_weight!r}.")
    torch.set_num_threads(1)
    per_seed = []
    for seed in range(args.seed_offset, args.seed_offset + args.seeds):
        print(f"{args.dataset}: seed {seed}", flush=True)
        per_seed.append(run_seed(args.dataset, seed, args.epochs, args.finetune_epochs, args.quick, args.probe_size,
                                 args.lr, args.base_p, args.max_p, args.calibrate, args.eval_split, arms,
                                 args.baseline_cache, args.val_eval_size, args.test_size, args.loop_shadow_kind,
                                 args.loop_shadow_blobs, args.aug_loss_weight))
    results = {
        "config": {"dataset": args.dataset, "seeds": args.seeds, "seed_offset": args.seed_offset,
                   "epochs": args.epochs, "finetune_epochs": args.finetune_epochs, "finetune_lr": args.lr,
                   "base_p": args.base_p, "max_p": args.max_p, "quick": args.quick, "calibrate": args.calibrate,
                   "eval_split": args.eval_split, "val_eval_size": args.val_eval_size, "arms": list(arms),
                   "probe_size": args.probe_size, "test_size": args.test_size, "torch_threads": 1,
                   "loop_shadow_kind": args.loop_shadow_kind, "loop_shadow_blobs": args.loop_shadow_blobs,
                   "aug_loss_weight": args.aug_loss_weight},
        "data": _data_settings(args.dataset),
        "summary": summarise(per_seed),
        "per_seed": per_seed,
    }
    suffix = ("_quick" if args.quick else "") + (f"_probe{args.probe_size}" if args.probe_size != 128 else "")
    if (args.base_p, args.max_p) != (0.3, 0.9):
        suffix += f"_p{args.base_p:g}-{args.max_p:g}"
    if args.lr != 3e-3:
        suffix += f"_lr{args.lr:g}"
    if args.finetune_epochs != 3:
        suffix += f"_ft{args.finetune_epochs}"
    if args.calibrate:
        suffix += "_calibrated"
    if args.eval_split != "test":
        suffix += f"_{args.eval_split}" + (f"{args.val_eval_size}" if args.val_eval_size else "")
    if args.test_size != 2000:
        suffix += f"_test{args.test_size}"
    if args.loop_shadow_kind is not None or args.loop_shadow_blobs is not None:
        suffix += f"_shadow{args.loop_shadow_kind or ''}{args.loop_shadow_blobs or ''}"
    if args.aug_loss_weight != 1.0:
        suffix += f"_augw{args.aug_loss_weight:g}"
    suffix += f"_{args.tag}" if args.tag else ""
    path = record(f"loop_{args.dataset}{suffix}", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
