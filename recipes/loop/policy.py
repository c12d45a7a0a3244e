"""The augmentation policy the failure concepts imply, the untargeted control, and the share of samples a policy
augments."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from augment import DEFAULT_AUGMENTATIONS, AugmentationPolicy
from augment.policy import derive_policies, why_no_rule
from debugger.contract import unpack_batch
from debugger.failures import FailureEvidence, evidence_from_report
from recipes.loop.diagnosis import Diagnosis


def loop_policies(
    diagnosis: Diagnosis,
    augmentations: Mapping[str, str] | None = None,
    fallback: str | None = None,
    max_p: float = 0.9,
    base: float = 0.3,
    min_precision: float = 0.5,
    min_class_support: int = 3,
    calibrate: bool = True,
) -> tuple[dict[str, AugmentationPolicy], list[str]]:
    """The augmentation policies the failure concepts imply, and the evidence used (one line per concept).

    Evidence is every discovered failure concept of the diagnosis's report whose top patches show a ground-truth
    concept (``min_precision``), then every failure among the annotated concepts (by name).

    With ``calibrate``, a failure concept whose darkening the diagnosis measured
    (:func:`~recipes.loop.diagnosis.annotated_darkening`: annotated concepts with masks; a discovered concept uses
    the ground-truth concept it shows) sets the strength of its transform: ``SyntheticShadow``'s ``intensity``
    becomes the measured 10th–90th percentile range of brightness removed, carried in the policy's ``params``
    (applied by :func:`~recipes.loop.finetuning.configure_transforms`) and stated in the evidence. Without masks,
    or with ``calibrate=False``, the transforms keep their settings.
    """
    augmentations = dict(DEFAULT_AUGMENTATIONS if augmentations is None else augmentations)
    evidence, _ = evidence_from_report(diagnosis.report, min_precision)
    class_names: list[str] | None = list(diagnosis.report.class_names) or None
    a = diagnosis.annotated
    if a is not None:
        for row in a.failures():
            i = a.names.index(row.name)
            evidence.append(FailureEvidence(row.name, row.name, float(row.lift), a.counts[i], a.overall))
    measured = a.darkening if a is not None and calibrate else {}
    evidence = [replace(e, darkening=measured[e.matches or e.name]) if (e.matches or e.name) in measured else e
                for e in evidence]
    policies = derive_policies(evidence, augmentations, fallback, base, max_p, min_class_support, class_names)
    return policies, [_evidence_line(e, augmentations.get(e.matches or e.name, fallback), policies,
                                     min_class_support) for e in evidence]


def _evidence_line(e: FailureEvidence, transform: str | None, policies: Mapping[str, AugmentationPolicy],
                   min_class_support: int) -> str:
    line = (f"{e.name}" + (f" (shows {e.matches})" if e.matches and e.matches != e.name else "")
            + f": lift {e.lift:.2f} → {transform or 'no transform'}")
    params: Mapping[str, Any] = policies[transform].params if transform is not None and transform in policies else {}
    if e.darkening is not None and params:
        shown = ", ".join(f"{k} {v[0]:.2f}–{v[1]:.2f}" if isinstance(v, tuple) else f"{k} {v}"
                          for k, v in params.items())
        line += f"; {e.darkening.describe(e.matches or e.name)} → {shown}"
    why = why_no_rule(e, min_class_support) if transform is not None else None
    if why is not None:
        # say why, or the line reads as if the transform had been chosen
        line += f" — {'no class rule from this concept' if transform in policies else 'no policy'}: {why}"
    return line

def uniform_policies(transforms: Iterable[str], p: float) -> dict[str, AugmentationPolicy]:
    """The untargeted control: every transform on every sample with the same probability ``p``."""
    return {t: AugmentationPolicy(base=p, augmentation=t) for t in transforms}


def mean_probability(policies: Mapping[str, AugmentationPolicy], dataset: Any, limit: int = 2048) -> float:
    """Expected fraction of samples that get at least one transform under ``policies`` (on ``dataset``)."""
    if not policies:
        return 0.0
    loader = DataLoader(Subset(dataset, range(min(limit, len(dataset)))), batch_size=256)
    total, n = 0.0, 0
    for batch in loader:
        b = unpack_batch(batch)
        keep = torch.ones(len(b.targets))
        for policy in policies.values():
            keep = keep * (1 - policy.probabilities(b.targets, b.concepts).cpu())
        total += float((1 - keep).sum())
        n += len(b.targets)
    return total / max(n, 1)


