"""Failure concept → transform, without labels: which transform makes the patches a concept is made of?

A discovered failure concept is a region of the analysis layer's embedding space (``cluster-6``), not a name. To
choose its augmentation, each transform of a catalogue is rendered on clean probe images and asked the question
the model would answer: do the patches the transform changed land in that concept?

For every transform ``t`` and strength ``s`` of a grid (``strengths``, one grid for all transforms: a renderer
maps ``s`` to its own parameters):

1. **render** ``t`` at ``s`` on all probe images at once — the augmented images and the pixels it changed;
2. **cut** the augmented images into patches exactly as the analysis did (its patch method and settings) and
   keep the *changed* patches: at least ``min_changed`` of their pixels changed;
3. **embed** them at the analysis layer (its embedding mode), and embed the same patches laid on the clean
   images: the paired control, same places and shapes, only the transform differs;
4. **assign** every embedding to the concepts: to the concept with the nearest centroid (``rule="centroid"``,
   the mean embedding of its members, which for k-means is its cluster centre) or to every concept whose score
   reaches its slice threshold (``rule="threshold"``, the report's kept discovery model);
5. **claim**: the share of the changed patches assigned to a concept (``claim_changed``) against the share of
   their clean counterparts assigned to it (``claim_clean``); the contrast is their difference.

Per concept, the cell ``(t, s)`` with the largest contrast among cells of at least ``min_patches`` changed
patches is its match when the contrast reaches ``min_contrast``; the strength range is the run of neighbouring
strengths of that transform whose contrast is at least ``range_fraction`` of the best. Otherwise the concept has
no match and the evidence says why (the policy then uses its fallback). A person's binding (``bind``,
``finetune.bind: {cluster-6: SyntheticShadow}``) overrides the choice; ground-truth annotations, where the data
has them, only say which ground-truth concept a cluster shows (``shows``), to score the choice, never to make it.

Renderers are plain callables ``(images, strength, generator) -> (augmented, changed_mask)``, so ``debugger``
needs nothing from ``augment``. The result, :class:`MatchResult`, holds one :class:`TransformMatch` per concept
and the whole :class:`ClaimTable`, serialisable for ``policy.json`` and the report.

Example:
    >>> from debugger.pipeline import ConceptAnalysis
    >>> net = nn.Sequential(nn.Conv2d(3, 1, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    >>> with torch.no_grad():
    ...     _ = net[0].weight.fill_(-1 / 3), net[0].bias.fill_(1.0)  # channel 0: darkness
    >>> def darken(images, strength, generator):
    ...     region = torch.zeros_like(images[:, 0], dtype=torch.bool)
    ...     region[:, :, :4] = True
    ...     return images * (1 - strength * region[:, None]), region
    >>> images = torch.ones(4, 3, 8, 8)
    >>> analysis = ConceptAnalysis(net, "1", patches="window", patch_kwargs={"sizes": (4,), "strides": (4,)})
    >>> dark = analysis.embed(darken(images, 0.8, None)[0])[1][:1]  # a concept of darkened patches
    >>> bright = analysis.embed(images)[1][:1]
    >>> matcher = TransformMatcher({"darken": darken}, strengths=(0.5, 0.8), min_patches=4)
    >>> table = matcher.measure(analysis, images, torch.cat([dark, bright]), concepts=("dark", "bright"))
    >>> m = match_transforms(table, ("dark",), min_patches=4)[0]
    >>> m.transform, m.strength_range, m.claim_changed, m.claim_clean
    ('darken', (0.5, 0.8), 1.0, 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from debugger.capture import model_device
from debugger.claims import (
    ClaimTable,
    MatchResult,
    Source,
    TransformMatch,
    centroid_claims,
    changed_fraction,
    strength_range,
    threshold_claims,
)
from debugger.structures import PatchSet

if TYPE_CHECKING:
    from debugger.pipeline import ConceptAnalysis
    from debugger.report import ConceptReport

Renderer = Callable[[Tensor, float, torch.Generator], tuple[Tensor, Tensor]]
Rule = Literal["centroid", "threshold"]

_RULES = ("centroid", "threshold")

__all__ = [
    "ClaimTable",
    "MatchResult",
    "TransformMatch",
    "TransformMatcher",
    "analysis_for",
    "centroid_claims",
    "changed_fraction",
    "match_transforms",
    "measure_claims",
    "outside_slices",
    "strength_range",
    "threshold_claims",
]


# -- measuring and choosing ------------------------------------------------------------------------------------------

def measure_claims(
    images: Tensor,
    renderers: Mapping[str, Renderer],
    strengths: Sequence[float],
    make_patches: Callable[[Tensor], PatchSet],
    embed: Callable[[Tensor, PatchSet], Tensor],
    claim: Callable[[Tensor], Tensor],
    concepts: Sequence[str],
    min_changed: float = 0.5,
    seed: int = 0,
    rule: str = "centroid",
) -> ClaimTable:
    """Render every transform at every strength on ``images`` and measure each concept's claim on what it changed.

    Each renderer gets all images at once and a fresh generator seeded with ``seed`` at every strength, so the
    regions are drawn alike and only the strength changes along the grid. The changed patches are embedded twice,
    on the augmented and on the clean images; ``claim`` assigns embeddings to the concepts.

    Args:
        images: clean probe images, on the model's device.
        renderers: transform name → ``(images, strength, generator) -> (augmented, changed)``, ``changed`` a
            ``(N, H, W)`` or ``(N, 1, H, W)`` mask (bool, or float with changed pixels above 0.5).
        strengths: the grid, ascending.
        make_patches: cuts images into patches (the analysis' :meth:`~debugger.pipeline.ConceptAnalysis.make_patches`).
        embed: embeds given patches of given images (the analysis' :meth:`~debugger.pipeline.ConceptAnalysis.embed`).
        claim: ``(n, D)`` embeddings → ``(C, n)`` bool, which concepts claim each patch.
        concepts: the ``C`` concept names, in ``claim``'s order.
        min_changed: fraction of a patch's pixels that must have changed for it to count.
        seed: seeds every renderer's generator.
        rule: recorded in the table (how ``claim`` assigns).

    Shape:
        - images: ``(N, C, H, W)``

    Raises:
        ValueError: for no renderers, an empty or non-ascending grid, ``min_changed`` outside ``(0, 1]``, a renderer
            returning the wrong shapes, or ``claim`` returning other than ``(C, n)``.
    """
    if not renderers or not all(callable(r) for r in renderers.values()):
        raise ValueError(f"Expected `renderers` to map names to callables, but got {dict(renderers)!r}.")
    grid = [float(s) for s in strengths]
    if not grid or any(not math.isfinite(s) for s in grid) or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
        raise ValueError(f"Expected `strengths` to be finite and strictly ascending, but got {list(strengths)!r}.")
    if not 0.0 < min_changed <= 1.0:
        raise ValueError(f"Expected `min_changed` to be in (0, 1], but got {min_changed!r}.")
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"Expected `images` of shape (N, C, H, W) with N > 0, but got {tuple(images.shape)!r}.")
    c, t, s = len(concepts), len(renderers), len(grid)
    changed_share = torch.full((c, t, s), float("nan"))
    clean_share = torch.full((c, t, s), float("nan"))
    counts = torch.zeros(t, s, dtype=torch.long)
    for j, (name, render) in enumerate(renderers.items()):
        for k, strength in enumerate(grid):
            with torch.no_grad():
                out = render(images, strength, torch.Generator().manual_seed(seed))
            augmented, changed = _check_render(name, out, images)
            patches = make_patches(augmented)
            picked = torch.nonzero(changed_fraction(patches, changed) >= min_changed).flatten()
            counts[j, k] = len(picked)
            if len(picked) == 0:
                continue
            subset = patches.take(picked)
            for share, source in ((changed_share, augmented), (clean_share, images)):
                claims = claim(embed(source, subset))
                if claims.shape != (c, len(picked)):
                    raise ValueError(f"Expected `claim` to return ({c}, {len(picked)}) bool, but got "
                                     f"{tuple(claims.shape)!r}.")
                share[:, j, k] = claims.float().mean(1).cpu()
    return ClaimTable(tuple(concepts), tuple(renderers), tuple(grid), changed_share, clean_share, counts, rule,
                      float(min_changed))


def match_transforms(
    table: ClaimTable,
    concepts: Sequence[str] | None = None,
    min_contrast: float = 0.1,
    min_patches: int = 30,
    range_fraction: float = 0.5,
    bind: Mapping[str, str] | None = None,
    lifts: Mapping[str, float] | None = None,
    shows: Mapping[str, tuple[str, float]] | None = None,
    ids: Mapping[str, int] | None = None,
) -> list[TransformMatch]:
    """Choose each concept's transform and strength range from a claim table (see the module docstring).

    Args:
        table: the measured claims.
        concepts: the concepts to match (default: every concept of the table), in order.
        min_contrast: the smallest ``claim_changed - claim_clean`` that counts as a match.
        min_patches: changed patches a (transform, strength) cell needs to be considered.
        range_fraction: strengths whose contrast is at least this fraction of the best form the range.
        bind: concept name → transform, chosen by a person (``finetune.bind``): overrides the measured choice;
            the strength range is still measured when the table has the transform.
        lifts: concept name → failure lift, quoted in the evidence.
        shows: concept name → (ground-truth concept its top patches show, precision), quoted in the evidence.
        ids: concept name → concept id, stored in the matches.

    Raises:
        ValueError: for a concept or bound concept not in the table, or thresholds out of range.

    Example:
        >>> changed = torch.tensor([[[0.1, 0.6, 0.7]], [[0.1, 0.1, 0.1]]])  # 2 concepts, 1 transform, 3 strengths
        >>> table = ClaimTable(("dark", "other"), ("shadow",), (0.2, 0.5, 0.8), changed, torch.full((2, 1, 3), 0.05),
        ...                    torch.full((1, 3), 50))
        >>> [(m.transform, m.strength_range) for m in match_transforms(table)]
        [('shadow', (0.5, 0.8)), (None, None)]
    """
    if not 0.0 <= range_fraction <= 1.0:
        raise ValueError(f"Expected `range_fraction` to be in [0, 1], but got {range_fraction!r}.")
    if not isinstance(min_patches, int) or min_patches < 1:
        raise ValueError(f"Expected `min_patches` to be a positive integer, but got {min_patches!r}.")
    if not math.isfinite(min_contrast) or not 0.0 < min_contrast <= 1.0:
        raise ValueError(f"Expected `min_contrast` to be in (0, 1], but got {min_contrast!r}.")
    names = list(table.concepts if concepts is None else concepts)
    for name in [*names, *(bind or {})]:
        if name not in table.concepts:
            raise ValueError(f"Expected a concept of the claim table {list(table.concepts)!r}, but got {name!r}.")
    names += [b for b in (bind or {}) if b not in names]
    usable = (table.counts >= min_patches)[None] & ~torch.isnan(table.contrast)
    contrast = torch.where(usable, table.contrast, torch.full_like(table.contrast, -math.inf))
    out = []
    for name in names:
        i = table.concepts.index(name)
        out.append(_match_one(table, i, contrast[i], min_contrast, min_patches, range_fraction,
                              (bind or {}).get(name), (lifts or {}).get(name, float("nan")), (shows or {}).get(name),
                              (ids or {}).get(name, -1)))
    return out


def _match_one(table: ClaimTable, i: int, contrast: Tensor, min_contrast: float, min_patches: int,
               range_fraction: float, bound: str | None, lift: float, shows: tuple[str, float] | None,
               concept_id: int) -> TransformMatch:
    name = table.concepts[i]
    head = name + (f" (lift {lift:.2f})" if math.isfinite(lift) else "")
    tail = f" Its top patches show ground-truth `{shows[0]}` ({shows[1]:.0%})." if shows else ""

    def result(transform: str | None, rng: tuple[float, float] | None, at: tuple[int, int] | None, source: Source,
               text: str) -> TransformMatch:
        """The match, its claims read at cell ``at`` (none: unmeasured)."""
        nan = float("nan")
        changed, clean, count, strength = (nan, nan, 0, None) if at is None else (
            float(table.changed[i][at]), float(table.clean[i][at]), int(table.counts[at]), table.strengths[at[1]])
        return TransformMatch(name, transform, rng, changed, clean, text + tail, concept_id, strength, count, source,
                              lift, shows[0] if shows else None, shows[1] if shows else nan)

    def said(j: int, k: int) -> str:
        return (f"{float(table.changed[i, j, k]):.0%} of the patches {table.transforms[j]} changed at strength "
                f"{table.strengths[k]:g} fall in {name}, {float(table.clean[i, j, k]):.0%} of the same patches clean "
                f"(n={int(table.counts[j, k])})")

    j, k = divmod(int(contrast.flatten().argmax()), contrast.shape[1])
    best = float(contrast[j, k])  # -inf when no cell has enough changed patches
    if bound is not None:
        jb = table.transforms.index(bound) if bound in table.transforms else -1
        kb = int(contrast[jb].argmax()) if jb >= 0 else 0
        if jb >= 0 and math.isfinite(float(contrast[jb, kb])):
            rng = strength_range(contrast[jb], table.strengths, kb, range_fraction)
            unbound = (f" Unbound, it would match {table.transforms[j]}." if j != jb and best >= min_contrast
                       else "")
            text = f"{head} ↔ {bound} strength {_range(rng)}, bound by a person (`bind`): {said(jb, kb)}.{unbound}"
            return result(bound, rng, (jb, kb), "bound", text)
        text = (f"{head} ↔ {bound}, bound by a person (`bind`); its strength was not measured "
                f"({bound} changed fewer than {min_patches} patches or is not in the catalogue measured).")
        return result(bound, None, None, "bound", text)
    if not math.isfinite(best):
        text = (f"{head}: no match — no transform changed {min_patches} or more patches at any strength "
                f"(at least {table.min_changed:.0%} of a patch's pixels); the policy's fallback applies.")
        return result(None, None, None, "none", text)
    if best < min_contrast:
        text = (f"{head}: no match — the strongest claim is {said(j, k)}: a contrast of {best:.2f}, below "
                f"{min_contrast:.2f}; the policy's fallback applies.")
        return result(None, None, (j, k), "none", text)
    rng = strength_range(contrast[j], table.strengths, k, range_fraction)
    others = [(float(contrast[o].max()), o) for o in range(contrast.shape[0]) if o != j]
    runner = ""
    if others and math.isfinite(max(others)[0]):
        o = max(others)[1]
        ko = int(contrast[o].argmax())
        runner = (f"; next best {table.transforms[o]}: {float(table.changed[i, o, ko]):.0%} vs "
                  f"{float(table.clean[i, o, ko]):.0%}")
    return result(table.transforms[j], rng, (j, k), "matched",
                  f"{head} ↔ {table.transforms[j]} strength {_range(rng)}: {said(j, k)}{runner}.")


class TransformMatcher:
    """Matches a report's failure concepts to the transforms of a catalogue; see the module docstring.

    Holds configuration only; :meth:`match` renders, embeds and decides.

    Args:
        renderers: transform name → ``(images, strength, generator) -> (augmented, changed_mask)``.
        strengths: the strength grid, ascending (one for every transform; a renderer maps it to its parameters).
        min_changed: fraction of a patch's pixels that must have changed for it to count as changed.
        min_patches: changed patches a (transform, strength) cell needs to count.
        min_contrast: the smallest ``claim_changed - claim_clean`` that makes a match.
        range_fraction: strengths whose contrast is at least this fraction of the best form the strength range.
        rule: ``"centroid"`` (nearest concept centroid, exclusive; the report's ``centroids``) or ``"threshold"``
            (score ≥ slice threshold, by the report's kept discovery model).
        within: with ``rule="centroid"``, the nearest concept claims a patch only within ``within`` times its
            radius (the report's ``radii``: the 95th percentile of its own members' distances); None: no limit (a
            patch unlike every concept still goes to the least unlike one).
        bind: concept name → transform chosen by a person; overrides the measured choice.
        seed: seeds the renderers' generators.

    Raises:
        ValueError: for an unknown rule, no renderers, an invalid grid or threshold.

    Example:
        >>> def untouched(images, strength, generator):
        ...     return images, torch.zeros_like(images[:, 0], dtype=torch.bool)
        >>> matcher = TransformMatcher({"untouched": untouched}, strengths=(0.5, 1.0), bind={"cluster-2": "Cutout"})
        >>> matcher.settings()["strengths"], matcher.settings()["within"]
        ([0.5, 1.0], 1.0)
    """

    def __init__(
        self,
        renderers: Mapping[str, Renderer],
        strengths: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0),
        min_changed: float = 0.5,
        min_patches: int = 30,
        min_contrast: float = 0.1,
        range_fraction: float = 0.5,
        rule: Rule = "centroid",
        within: float | None = 1.0,
        bind: Mapping[str, str] | None = None,
        seed: int = 0,
    ) -> None:
        if rule not in _RULES:
            raise ValueError(f"Expected `rule` to be one of {_RULES!r}, but got {rule!r}.")
        if not renderers or not all(isinstance(k, str) and callable(v) for k, v in renderers.items()):
            raise ValueError(f"Expected `renderers` to map transform names to callables, but got {renderers!r}.")
        grid = tuple(float(s) for s in strengths)
        if not grid or any(b <= a for a, b in zip(grid, grid[1:], strict=False)):
            raise ValueError(f"Expected `strengths` to be strictly ascending, but got {list(strengths)!r}.")
        if not 0.0 < min_changed <= 1.0:
            raise ValueError(f"Expected `min_changed` to be in (0, 1], but got {min_changed!r}.")
        if not isinstance(min_patches, int) or min_patches < 1:
            raise ValueError(f"Expected `min_patches` to be a positive integer, but got {min_patches!r}.")
        if not 0.0 < min_contrast <= 1.0:
            raise ValueError(f"Expected `min_contrast` to be in (0, 1], but got {min_contrast!r}.")
        if not 0.0 <= range_fraction <= 1.0:
            raise ValueError(f"Expected `range_fraction` to be in [0, 1], but got {range_fraction!r}.")
        self.renderers = dict(renderers)
        self.strengths = grid
        self.min_changed = min_changed
        self.min_patches = min_patches
        self.min_contrast = min_contrast
        self.range_fraction = range_fraction
        if within is not None and not (isinstance(within, int | float) and within > 0):
            raise ValueError(f"Expected `within` to be None or a positive number, but got {within!r}.")
        self.rule: Rule = rule
        self.within = within
        self.bind = dict(bind or {})
        self.seed = seed

    def measure(self, analysis: ConceptAnalysis, images: Tensor, centroids: Tensor | None = None,
                concepts: Sequence[str] = (), score: Callable[[Tensor], Tensor] | None = None,
                thresholds: Tensor | None = None, radii: Tensor | None = None,
                parts: Mapping[int, Sequence[int]] | None = None) -> ClaimTable:
        """The claim table for concepts given by ``centroids`` (``rule="centroid"``; with ``radii``, claims reach
        ``within`` radii, without them they are unlimited) or by ``score`` and ``thresholds``
        (``rule="threshold"``), patches made and embedded by ``analysis``.

        ``parts`` maps a concept made of others (a merged failure concept, ``meta["merged_from"]``) to the rows of
        its parts: it claims what any part claims and takes no part in the nearest-centroid competition.

        Raises:
            ValueError: if what the rule needs is missing, or the names do not match the concepts.
        """
        groups = dict(parts or {})
        if self.rule == "centroid":
            if centroids is None:
                raise ValueError("Expected concept `centroids` for rule='centroid', but got None.")
            # a report keeps centroids for its discovered concepts; merged concepts come after them, without one
            count = max(int(centroids.shape[0]), max(groups, default=-1) + 1)
            base = [i for i in range(int(centroids.shape[0])) if i not in groups]
            cents = centroids.float()[base]
            reach = None if self.within is None or radii is None else radii.float()[base] * self.within

            def own(emb: Tensor) -> Tensor:
                out = torch.zeros(count, emb.shape[0], dtype=torch.bool, device=emb.device)
                out[base] = centroid_claims(emb, cents, reach)
                return out
        else:
            if score is None or thresholds is None:
                raise ValueError("Expected `score` and `thresholds` for rule='threshold', but got None.")
            scorer, cut = score, thresholds.float()
            count = int(cut.shape[0])

            def own(emb: Tensor) -> Tensor:
                return threshold_claims(scorer(emb.float().cpu()), cut)

        def claim(emb: Tensor) -> Tensor:
            out = own(emb)
            for i, rows in groups.items():
                out[i] = out[list(rows)].any(0)
            return out
        names = tuple(concepts) or tuple(f"concept-{i}" for i in range(count))
        if len(names) != count:
            raise ValueError(f"Expected one name per concept ({count}), but got {list(names)!r}.")
        device = model_device(analysis.model)
        return measure_claims(
            images.to(device), self.renderers, self.strengths, analysis.make_patches,
            lambda x, p: analysis.embed(x, p)[1], claim, names, self.min_changed, self.seed, self.rule,
        )

    def match(self, analysis: ConceptAnalysis | nn.Module, report: ConceptReport, images: Tensor,
              concepts: Sequence[str | int] | None = None) -> MatchResult:
        """Match the report's failure concepts (or ``concepts``, by name or id) to the renderers' transforms.

        Args:
            analysis: the analysis that made ``report``, or its model (the patch and embedding settings are then
                read from ``report.config``, see :func:`analysis_for`).
            report: the concepts, their centroids (``rule="centroid"``) or discovery model (``"threshold"``).
            images: clean probe images (without the failure's concept), ``(N, C, H, W)``.
            concepts: the concepts to match; default the report's failure concepts, worst first.

        Raises:
            ValueError: if the analysis is of another layer than the report, the report lacks what the rule
                needs, or a concept (or a bound one) is not in the report.
        """
        if not isinstance(analysis, nn.Module) and analysis.layer != report.layer:
            raise ValueError(f"Expected an analysis of the report's layer {report.layer!r}, but got "
                             f"{analysis.layer!r}.")
        runner = analysis_for(report, analysis) if isinstance(analysis, nn.Module) else analysis
        names = report.concept_names
        if concepts is None:
            chosen = [row.name for row in report.failures]
        else:
            chosen = [report.concept(c).name for c in concepts]
        for b in self.bind:
            if b not in names:
                raise ValueError(f"Expected every bound concept to be one of the report's {names!r}, but got {b!r}.")
        if not chosen and not self.bind:  # nothing to act on: spare the rendering
            nan = torch.full((len(names), len(self.renderers), len(self.strengths)), float("nan"))
            empty = ClaimTable(tuple(names), tuple(self.renderers), self.strengths, nan, nan.clone(),
                               torch.zeros(len(self.renderers), len(self.strengths), dtype=torch.long), self.rule,
                               self.min_changed)
            return MatchResult((), empty, self.settings())
        if self.rule == "centroid":
            if report.centroids is None:
                raise ValueError("Expected a report with concept `centroids` (rule='centroid'), but got one without: "
                                 "it was written before they were kept; re-run the analysis or use rule='threshold'.")
            if self.within is not None and report.radii is None:
                raise ValueError("Expected a report with concept `radii` (`within` is set), but got one without: it "
                                 "was written before they were kept; re-run the analysis or use within=None.")
            table = self.measure(runner, images, centroids=report.centroids, concepts=names, radii=report.radii,
                                 parts=_parts(report))
        else:
            table = self.measure(runner, images, concepts=names, score=lambda e: report.score(e),
                                 thresholds=report.slice_thresholds, parts=_parts(report))
        lifts = {row.name: float(row.lift) for row in report.ranking}
        matches = match_transforms(table, chosen, self.min_contrast, self.min_patches, self.range_fraction,
                                   self.bind, lifts, _shows(report), {c.name: c.id for c in report.concepts})
        return MatchResult(tuple(matches), table, self.settings())

    def settings(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (stored in every result)."""
        return {"transforms": list(self.renderers), "strengths": list(self.strengths),
                "min_changed": self.min_changed, "min_patches": self.min_patches, "min_contrast": self.min_contrast,
                "range_fraction": self.range_fraction, "rule": self.rule, "within": self.within,
                "bind": dict(self.bind), "seed": self.seed}


def outside_slices(membership: Tensor, rows: Sequence[int] | None = None) -> Tensor:
    """Which probe images lie in none of the given concepts' slices (all concepts when ``rows`` is None): without
    annotations, the clean images to render a catalogue on are those outside every failure concept's slice.

    Shape:
        - membership: ``(C, N)`` bool, a report's ``membership``; output: ``(N,)`` bool

    Example:
        >>> membership = torch.tensor([[True, False, False], [False, False, True]])
        >>> outside_slices(membership, [0]).tolist(), outside_slices(membership).tolist()
        ([False, True, True], [False, True, False])
    """
    picked = membership.bool() if rows is None else membership.bool()[list(rows)]
    return ~picked.any(0)


def analysis_for(report: ConceptReport, model: nn.Module) -> ConceptAnalysis:
    """A :class:`~debugger.pipeline.ConceptAnalysis` of ``model`` that cuts and embeds patches as the one that made
    ``report`` did (its layer, patch method, embedding mode and their settings, read from ``report.config``).

    Raises:
        ValueError: if the report's config does not name a patch method and embedding mode.
    """
    from debugger.pipeline import ConceptAnalysis

    cfg = report.config
    if "patches" not in cfg or "embedding" not in cfg:
        raise ValueError(f"Expected a report whose `config` names its `patches` and `embedding`, but got keys "
                         f"{sorted(cfg)!r}.")
    return ConceptAnalysis(model, report.layer, patches=cfg["patches"], embedding=cfg["embedding"],
                           patch_kwargs=_tuples(cfg.get("patch_kwargs", {})),
                           embed_kwargs=_tuples(cfg.get("embed_kwargs", {})))


# -- helpers ------------------------------------------------------------------------------------------------------


def _check_render(name: str, out: Any, images: Tensor) -> tuple[Tensor, Tensor]:
    n, _, h, w = images.shape
    if not (isinstance(out, tuple | list) and len(out) == 2 and all(isinstance(o, Tensor) for o in out)):
        raise ValueError(f"Expected renderer {name!r} to return (augmented, changed_mask) tensors, but got "
                         f"{type(out).__name__}.")
    augmented, changed = out
    if augmented.shape != images.shape:
        raise ValueError(f"Expected renderer {name!r} to return images of shape {tuple(images.shape)!r}, but got "
                         f"{tuple(augmented.shape)!r}.")
    if changed.dim() == 4 and changed.shape[1] == 1:
        changed = changed[:, 0]
    if tuple(changed.shape) != (n, h, w):
        raise ValueError(f"Expected renderer {name!r} to return a changed mask of shape ({n}, {h}, {w}) or "
                         f"({n}, 1, {h}, {w}), but got {tuple(changed.shape)!r}.")
    mask = changed if changed.dtype == torch.bool else changed.float() > 0.5
    return augmented, mask.cpu()


def _parts(report: ConceptReport) -> dict[int, list[int]]:
    """Rows of the report's merged concepts → the rows of the concepts they were merged from."""
    ids = [c.id for c in report.concepts]
    out = {}
    for i, c in enumerate(report.concepts):
        merged = c.meta.get("merged_from") or []
        if merged and all(p in ids for p in merged):
            out[i] = [ids.index(p) for p in merged]
    return out


def _shows(report: ConceptReport) -> dict[str, tuple[str, float]]:
    gt, names = report.ground_truth_precision, report.patches.concept_names
    if gt is None or gt.numel() == 0 or len(names) != gt.shape[1]:
        return {}
    out = {}
    for i, c in enumerate(report.concepts):
        j = int(gt[i].argmax())
        out[c.name] = (names[j], float(gt[i, j]))
    return out


def _range(r: tuple[float, float]) -> str:
    return f"{r[0]:g}" if r[0] == r[1] else f"{r[0]:g}–{r[1]:g}"


def _tuples(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


