"""The augmentation policy the failure concepts imply, the untargeted control, and the share of samples a policy
augments.

Two ways to a policy: :func:`matched_policies` (the loop's default) lets every discovered failure concept choose
its transform from the catalogue by what its patches look like (:mod:`debugger.matching`), with no labels;
:func:`loop_policies` maps the ground-truth concept a failure shows to a named transform (annotated data only).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from augment import DEFAULT_AUGMENTATIONS, AugmentationPolicy
from augment.catalog import CatalogEntry, catalog, render, strength_grid
from augment.policy import derive_policies, why_no_rule
from debugger.contract import unpack_batch
from debugger.failures import FailureEvidence, evidence_from_report
from debugger.matching import MatchResult, Renderer, TransformMatcher
from debugger.report import ConceptReport
from recipes.loop.diagnosis import Diagnosis
from recipes.loop.run import LoopError


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


# -- the policy from matching: discovered failure concepts choose their transform --------------------------------


@dataclass(frozen=True)
class MatchedStrength:
    """The strength range a matched transform was claimed at (what :func:`~augment.policy.derive_policies` reads as
    a measured strength and turns into the policy's ``params``).

    Example:
        >>> MatchedStrength(0.6, 0.8, "cluster-6 ↔ shadow-line").describe("cluster-6")
        'matched: cluster-6 ↔ shadow-line'
    """

    low: float
    high: float
    text: str

    def describe(self, concept: str) -> str:
        return f"matched: {self.text}"


def catalogue_renderers(names: Sequence[str] | None = None) -> dict[str, Renderer]:
    """The catalogue's transforms (:mod:`augment.catalog`, ours) as the matcher's renderers, by entry name.

    Raises:
        LoopError: for a name that is not a catalogue entry.

    Example:
        >>> sorted(catalogue_renderers(["haze", "shadow-line"]))
        ['haze', 'shadow-line']
    """
    entries = {e.name: e for e in catalog(("conceptfix",))}
    chosen = list(entries) if names is None else list(names)
    unknown = [n for n in chosen if n not in entries]
    if unknown:
        raise LoopError(f"Expected catalogue entries from {sorted(entries)}, but got {unknown!r}.")

    def renderer(e: CatalogEntry) -> Renderer:
        def draw(images: Tensor, strength: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
            return render(e, images, strength, generator)
        return draw

    return {n: renderer(entries[n]) for n in chosen}


def clean_probe_images(report: ConceptReport, images: Tensor, min_images: int = 16) -> tuple[Tensor, str]:
    """The probe images no failure concept's slice holds (the transforms are rendered on these), and a line saying
    which were used.

    A failure already in an image would make its clean patches look changed and shrink the contrast, so the
    images of failure slices are left out; when fewer than ``min_images`` remain (failures everywhere), all
    probe images are used and the line says so.

    Shape:
        - images: ``(N, C, H, W)``, the probe images in the report's order (``report.membership`` columns)
    """
    n = images.shape[0]
    failing = torch.zeros(n, dtype=torch.bool)
    rows = {c.id: i for i, c in enumerate(report.concepts)}
    for row in report.failures:
        if row.concept in rows and rows[row.concept] < report.membership.shape[0]:
            failing |= report.membership[rows[row.concept]].cpu().bool()[:n]
    keep = ~failing
    if int(keep.sum()) >= min_images:
        return images[keep], f"rendered on the {int(keep.sum())} of {n} probe images outside every failure slice"
    return images, (f"rendered on all {n} probe images (only {int(keep.sum())} lie outside every failure slice, "
                    f"fewer than {min_images})")


def matched_policies(
    model: nn.Module,
    diagnosis: Diagnosis,
    images: Tensor,
    bind: Mapping[str, str] | None = None,
    fallback: str | None = None,
    max_p: float = 0.9,
    base: float = 0.3,
    min_class_support: int = 3,
    renderers: Mapping[str, Renderer] | None = None,
    max_images: int = 32,
    seed: int = 0,
    matcher_kwargs: Mapping[str, Any] | None = None,
) -> tuple[dict[str, AugmentationPolicy], list[str], MatchResult]:
    """The policies the discovered failure concepts choose for themselves, the evidence lines, and the match.

    Every failure concept of the diagnosis's report is matched to a transform of the catalogue
    (:func:`catalogue_renderers`; ``renderers`` to choose others) by :class:`~debugger.matching.TransformMatcher`,
    rendered over :func:`~augment.catalog.strength_grid` on the clean probe images (:func:`clean_probe_images`,
    at most ``max_images``). The matched strength range becomes the policy's ``params`` (``strength``; applied by
    :func:`~recipes.loop.finetuning.configure_transforms`). A concept without a match gets ``fallback`` (None: no
    policy), and its evidence line says so. ``bind`` (concept → transform) overrides the choice. Ground-truth
    annotations never choose: where the data has them, a line says which annotated concept a concept shows.

    Args:
        images: the probe images the diagnosis analysed, in its order.

    Raises:
        LoopError: for a bound concept that is not in the report.
    """
    report = diagnosis.report
    renderers = dict(catalogue_renderers() if renderers is None else renderers)
    for concept in bind or {}:
        if concept not in report.concept_names:
            raise LoopError(f"Expected every concept of `finetune.bind` to be one of the report's concepts "
                            f"{report.concept_names}, but got {concept!r}.")
    clean, used = clean_probe_images(report, images)
    clean = clean[:max_images]
    kwargs = {"strengths": strength_grid(5), "seed": seed, **dict(matcher_kwargs or {})}
    matcher = TransformMatcher(renderers, bind=bind, **kwargs)
    try:
        result = matcher.match(model, report, clean)
    except ValueError as err:
        raise LoopError(f"Expected the report's concepts to be matchable to transforms, but: {err}") from err
    evidence, _ = evidence_from_report(report)
    policies, lines = policies_from_match(result, evidence, fallback, base, max_p, min_class_support,
                                          list(report.class_names) or None, tuple(renderers))
    return policies, [f"{used}; strengths {', '.join(f'{s:g}' for s in matcher.strengths)}", *lines], result


def policies_from_match(
    match: MatchResult,
    failures: Sequence[FailureEvidence],
    fallback: str | None = None,
    base: float = 0.3,
    max_p: float = 0.9,
    min_class_support: int = 3,
    class_names: Sequence[str] | None = None,
    strength_transforms: Sequence[str] | None = None,
) -> tuple[dict[str, AugmentationPolicy], list[str]]:
    """The policies a match implies for ``failures``, and one evidence line per failure.

    A failure whose match names a transform gets it, with ``params={"strength": strength_range}`` when the range
    was measured (and the transform is in ``strength_transforms``, default: every matched one); a failure without
    a match gets ``fallback`` (None: no policy), and its line says so. Class rules come from
    :func:`~augment.policy.derive_policies`; a ground-truth concept a failure shows (``matches``) is ignored.

    Example:
        >>> from debugger.matching import ClaimTable, TransformMatch
        >>> table = ClaimTable(("cluster-1",), ("defocus",), (0.5,), torch.ones(1, 1, 1), torch.zeros(1, 1, 1),
        ...                    torch.ones(1, 1, dtype=torch.long))
        >>> m = TransformMatch("cluster-1", "defocus", (0.4, 0.6), 0.8, 0.1, "cluster-1 ↔ defocus 0.4–0.6")
        >>> cm = torch.tensor([[1, 4], [0, 5]])  # class 0 wrong 4/5 times in the slice
        >>> f = FailureEvidence("cluster-1", None, 3.0, cm, cm + torch.tensor([[20, 0], [0, 20]]))
        >>> policies, lines = policies_from_match(MatchResult((m,), table), [f])
        >>> policies["defocus"].params, lines[0]
        ({'strength': (0.4, 0.6)}, 'cluster-1 ↔ defocus 0.4–0.6')
    """
    by_name = {m.concept: m for m in match.matches}
    chosen: dict[str, str] = {}
    plain = []
    for e in failures:
        m = by_name.get(e.name)
        e = replace(e, matches=None)  # annotations score the choice, they do not make it
        if m is not None and m.transform is not None:
            chosen[e.name] = m.transform
            if m.strength_range is not None:
                e = replace(e, darkening=MatchedStrength(*m.strength_range, m.evidence))  # type: ignore[arg-type]
        plain.append(e)
    allowed = set(chosen.values()) if strength_transforms is None else set(strength_transforms)
    strength_params = {t: "strength" for t in chosen.values() if t in allowed}
    policies = derive_policies(plain, chosen, fallback, base, max_p, min_class_support, class_names,
                               strength_params)
    lines = []
    for e in plain:
        m = by_name.get(e.name)
        transform = chosen.get(e.name, fallback)
        line = m.evidence if m is not None else f"{e.name} (lift {e.lift:.2f}): not matched"
        if m is None or m.transform is None:
            line += f" → fallback {transform}" if transform is not None else " → no fallback set: no policy"
        why = why_no_rule(e, min_class_support) if transform is not None else None
        if why is not None:
            line += f" — {'no class rule from this concept' if transform in policies else 'no policy'}: {why}"
        lines.append(line)
    failing = {e.name for e in plain}
    lines += [f"{m.evidence} {m.concept} is not a failure concept: no policy from it." for m in match.matches
              if m.source == "bound" and m.concept not in failing]
    return policies, lines
