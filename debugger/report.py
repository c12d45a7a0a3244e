"""``ConceptReport``: one serializable value holding everything a concept analysis found.

Concepts (with every patch's score), the patches they were found on, each concept's slice and top patches,
its confusion matrix, the failure ranking, model/epoch differences, ensemble checks, and the configuration
that produced them. :meth:`ConceptReport.to_json` / :meth:`ConceptReport.from_json` round-trip without loss
(tensor dtypes and shapes, NaN and infinities included); :meth:`ConceptReport.save` writes atomically. The
schema is documented in ``docs/report-schema.md``.
"""

from __future__ import annotations

import base64
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from debugger.confusion import EnsembleCheck, confusion_accuracy
from debugger.files import atomic_write
from debugger.probes import detectable_rate
from debugger.ranking import ConceptFailure
from debugger.structures import Concept, PatchSet
from debugger.text import number, p_value, percent

SCHEMA_VERSION = 1
Task = Literal["classification", "segmentation"]

_DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}


@dataclass
class ConceptReport:
    """Everything one run of the concept analysis produced.

    Shape:
        - membership: ``(C, N)`` bool, which probe images each concept's slice holds
        - top_patches: ``(C, k)`` int64, each concept's top patches (indices into ``patches``), best first
        - confusion: ``(C, K, K)`` int64 counts on each slice (per pixel inside the patches for segmentation)
        - overall_confusion: ``(K, K)`` int64 on the whole probe set, or None
        - iou: ``(C, K)`` float, per-class IoU inside each slice (segmentation), or None
        - image_accuracy: ``(N,)`` float, 1/0 per image (classification) or pixel accuracy (segmentation)
        - ground_truth_precision: ``(C, G)`` float, fraction of each concept's top patches that overlap each
          ground-truth concept mask (``patches.concept_names``), or None without ground truth
        - diffs: name → ``(C, K, K)`` float, normalized ``second - first`` confusion differences
        - centroids: ``(C, D)`` float32, the mean embedding of each concept's members (how new patches are
          assigned to the concepts, :mod:`debugger.matching`), or None (reports written before they were kept)
        - radii: ``(C,)`` float32, the 95th percentile of the members' distances to their centroid, or None

    ``discovery`` is the fitted k-means/NMF model behind the concepts (:meth:`ConceptDiscovery.to_dict
    <debugger.discovery.ConceptDiscovery.to_dict>`), so :meth:`score` can score patches of images the analysis
    never saw; None when the concepts came from a callable.
    """

    task: Task
    layer: str
    num_classes: int
    concepts: list[Concept]
    patches: PatchSet
    membership: Tensor
    top_patches: Tensor
    confusion: Tensor
    ranking: list[ConceptFailure]
    class_names: tuple[str, ...] = ()
    overall_confusion: Tensor | None = None
    iou: Tensor | None = None
    image_accuracy: Tensor | None = None
    ground_truth_precision: Tensor | None = None
    diffs: dict[str, Tensor] = field(default_factory=dict)
    ensembles: dict[str, EnsembleCheck] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    discovery: dict[str, Any] | None = None
    centroids: Tensor | None = None
    radii: Tensor | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def scores(self) -> Tensor:
        """``(C, P)`` concept scores of every patch (stacked from the concepts)."""
        if not self.concepts:
            return torch.zeros(0, len(self.patches))
        return torch.stack([c.scores.float() for c in self.concepts])

    @property
    def concept_names(self) -> list[str]:
        return [c.name for c in self.concepts]

    @property
    def failures(self) -> list[ConceptFailure]:
        """The failure concepts, worst first: rows whose verdict is a failure, except those merged into another
        (``merged_into``; the merged concept's row stands for them)."""
        return [row for row in self.ranking if row.reported]

    @property
    def slice_thresholds(self) -> Tensor:
        """``(C,)`` an image is in a concept's slice when one of its patches scores at least this (how :meth:`score`
        results map onto slices of new images): the score of the concept's weakest member when the slices were
        made of members (``config["slices"] == "members"``), else of its weakest top patch."""
        if not self.concepts or self.top_patches.numel() == 0:
            return torch.zeros(len(self.concepts))
        if self.config.get("slices") == "members":
            scores = self.scores
            return torch.stack([
                scores[i, c.members.long()].min() if c.members.numel() else scores.new_tensor(float("inf"))
                for i, c in enumerate(self.concepts)
            ])
        return self.scores.gather(1, self.top_patches[:, -1:].long()).squeeze(1)

    def slices_of(self, scores: Tensor, image_index: Tensor, num_images: int) -> Tensor:
        """Which images fall in each concept's slice, from their patches' scores (:meth:`score`), as the analysis
        made its slices.

        Top-``k`` slices (``config["slices"] == "top_k"``): an image is in a slice when one of its patches reaches
        :attr:`slice_thresholds`. Member slices: a patch is a member of the discovered concept it scores best on
        (k-means / NMF assignment) when it also reaches that concept's weakest member's score (discovery's outlier
        cut); a concept from another source (``extra_concepts``, or all of them without a kept discovery model)
        takes the patches reaching its threshold, a merged concept its parts' members. On the analysis' own
        patches this gives back :attr:`membership` (unless discovery dropped a cluster as too small, whose patches
        may then join a neighbour here).

        Shape:
            - scores: ``(C, P)``; image_index: ``(P,)`` in ``[0, N)``; output: ``(C, N)`` bool

        Raises:
            ValueError: if ``scores`` does not have one row per concept and one column per entry of
                ``image_index``.
        """
        num_concepts = len(self.concepts)
        if scores.dim() != 2 or scores.shape[0] != num_concepts or image_index.shape != (scores.shape[1],):
            raise ValueError(
                f"Expected `scores` of shape ({num_concepts}, P) and `image_index` of shape (P,), but got "
                f"{tuple(scores.shape)!r} and {tuple(image_index.shape)!r}."
            )
        scores = torch.nan_to_num(scores.float(), nan=-torch.inf)
        threshold = self.slice_thresholds.to(scores).view(-1, 1)
        member = scores >= threshold  # (C, P)
        if self.config.get("slices") == "members":
            merged = [i for i, c in enumerate(self.concepts) if c.meta.get("merged_from")]
            extra = len(self.config.get("extra_concepts", ()))
            found = num_concepts - len(merged) - extra if self.discovery is not None else 0
            if found > 0:
                best = scores[:found].argmax(0)
                rows = torch.arange(found).view(-1, 1)
                member[:found] &= best.view(1, -1) == rows
            row = {c.id: i for i, c in enumerate(self.concepts)}
            for i in merged:
                parts = [row[j] for j in self.concepts[i].meta["merged_from"] if j in row]
                member[i] = member[parts].any(0)
        out = torch.zeros(num_concepts, num_images, dtype=torch.bool)
        for c in range(num_concepts):
            out[c, image_index.long()[member[c]]] = True
        return out

    def score(self, embeddings: Tensor) -> Tensor:
        """Scores of new patch embeddings for this report's concepts, from the discovery model it kept.

        The embeddings must come from the report's layer and embedding mode (see
        :meth:`debugger.pipeline.ConceptAnalysis.score`, which makes and embeds the patches of new images). Scores
        are comparable with :attr:`scores` and :attr:`slice_thresholds`.

        Concepts the kept model did not produce (``extra_concepts`` of the analysis, appended after the discovered
        ones) score NaN, so they are in no slice of new images; a merged concept (``meta["merged_from"]``) scores
        the best of its parts, as it did in the analysis.

        Shape:
            - embeddings: ``(n, D)``; output: ``(C, n)``

        Raises:
            ValueError: if the report kept no discovery model (concepts from a callable, or a report written
                before models were kept), the model has more concepts than the report, or the embeddings do not
                match it.
        """
        if self.discovery is None:
            raise ValueError(
                "Expected a report that kept its k-means/NMF discovery model (`discovery`), but got one without: "
                "its concepts came from a callable or it was written before models were kept; re-run the analysis."
            )
        from debugger.discovery import ConceptDiscovery

        found = ConceptDiscovery.from_dict(self.discovery).transform(embeddings).T  # (discovered concepts, n)
        if found.shape[0] > len(self.concepts):
            raise ValueError(
                f"Expected the kept discovery model to score at most the report's {len(self.concepts)} concepts, but "
                f"it scores {found.shape[0]}."
            )
        out = found.new_full((len(self.concepts), found.shape[1]), float("nan"))
        out[: found.shape[0]] = found
        row = {c.id: i for i, c in enumerate(self.concepts)}
        for i, c in enumerate(self.concepts):
            parts = [row[j] for j in c.meta.get("merged_from", ()) if j in row]
            if parts:
                out[i] = torch.nan_to_num(out[parts], nan=-torch.inf).amax(0)
        return out

    def concept(self, key: int | str) -> Concept:
        """A concept by id or by name.

        Raises:
            KeyError: if no concept has that id or name.
        """
        for c in self.concepts:
            if c.id == key or c.name == key:
                return c
        raise KeyError(f"Expected `key` to be the id or name of a concept in {self.concept_names!r}, but got {key!r}.")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (see ``docs/report-schema.md``)."""
        return {
            "schema_version": self.schema_version,
            "task": self.task,
            "layer": self.layer,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
            "concepts": [_encode_concept(c) for c in self.concepts],
            "patches": _encode_patches(self.patches),
            "membership": encode_tensor(self.membership),
            "top_patches": encode_tensor(self.top_patches),
            "confusion": encode_tensor(self.confusion),
            "overall_confusion": _maybe(self.overall_confusion),
            "iou": _maybe(self.iou),
            "image_accuracy": _maybe(self.image_accuracy),
            "ground_truth_precision": _maybe(self.ground_truth_precision),
            "ranking": [_encode_value(row.to_dict()) for row in self.ranking],
            "diffs": {k: encode_tensor(v) for k, v in self.diffs.items()},
            "ensembles": {
                k: {name: encode_tensor(getattr(v, name)) for name in EnsembleCheck.__dataclass_fields__}
                for k, v in self.ensembles.items()
            },
            "config": _encode_value(self.config),
            "meta": _encode_value(self.meta),
            "discovery": None if self.discovery is None else _encode_value(self.discovery),
            "centroids": _maybe(self.centroids),
            "radii": _maybe(self.radii),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConceptReport:
        """Rebuild a report from :meth:`to_dict` output.

        Raises:
            ValueError: if the dict was written by a newer schema version than this code reads.
        """
        version = int(d.get("schema_version", -1))
        if not 1 <= version <= SCHEMA_VERSION:
            raise ValueError(
                f"Expected `schema_version` to be between 1 and {SCHEMA_VERSION} (what this conceptfix reads), "
                f"but got {d.get('schema_version')!r}."
            )
        return cls(
            task=d["task"],
            layer=str(d["layer"]),
            num_classes=int(d["num_classes"]),
            class_names=tuple(d.get("class_names", ())),
            concepts=[_decode_concept(c) for c in d["concepts"]],
            patches=_decode_patches(d["patches"]),
            membership=decode_tensor(d["membership"]),
            top_patches=decode_tensor(d["top_patches"]),
            confusion=decode_tensor(d["confusion"]),
            overall_confusion=_maybe_decode(d.get("overall_confusion")),
            iou=_maybe_decode(d.get("iou")),
            image_accuracy=_maybe_decode(d.get("image_accuracy")),
            ground_truth_precision=_maybe_decode(d.get("ground_truth_precision")),
            ranking=[ConceptFailure.from_dict(_decode_value(row)) for row in d.get("ranking", [])],
            diffs={k: decode_tensor(v) for k, v in d.get("diffs", {}).items()},
            ensembles={
                k: EnsembleCheck(**{name: decode_tensor(t) for name, t in v.items()})
                for k, v in d.get("ensembles", {}).items()
            },
            config=_decode_value(d.get("config", {})),
            meta=_decode_value(d.get("meta", {})),
            discovery=_decode_value(d.get("discovery")),
            centroids=_maybe_decode(d.get("centroids")),
            radii=_maybe_decode(d.get("radii")),
            schema_version=version,
        )

    def to_json(self, indent: int | None = None) -> str:
        """Standard JSON (no bare ``NaN``/``Infinity``), readable by any JSON parser."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> ConceptReport:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the JSON atomically: a temporary file in the same directory, fsync'ed, then ``os.replace``.

        A reader (TensorBoard plugin, a resumed run) never sees a half-written report. Creates missing
        parent directories.
        """
        return atomic_write(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ConceptReport:
        """Read a report written by :meth:`save`.

        Raises:
            ValueError: if the file is not a report's JSON (naming the file), or its ``schema_version`` is
                newer than this conceptfix reads.
        """
        raw = Path(path).read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"Expected {str(path)!r} to hold a ConceptReport's JSON, but it is not JSON: {err}."
                             ) from err
        if not isinstance(data, dict):
            raise ValueError(f"Expected {str(path)!r} to hold a ConceptReport's JSON object, but it holds a "
                             f"{type(data).__name__}.")
        return cls.from_dict(data)

    def to_markdown(self, max_rows: int = 20) -> str:
        """A human summary: the failure ranking as a table, then each concept's slice accuracy."""
        lines = [
            f"# Concept report — {self.task}, layer `{self.layer}`",
            "",
            f"{len(self.concepts)} concepts over {len(self.patches)} patches "
            f"({self.patches.method or 'patches'}) from {int(self.membership.shape[1])} probe images.",
        ]
        if self.image_accuracy is not None and self.image_accuracy.numel():
            lines.append(f"Probe accuracy: {float(self.image_accuracy.float().mean()):.3f}.")
        lines += _coverage_line(int(self.membership.shape[1]), self.config.get("min_support"))
        for key in ("epoch", "global_step"):
            if key in self.meta:
                lines.append(f"{key.replace('_', ' ').capitalize()}: {self.meta[key]}.")
        failures = self.failures
        lines += [
            "",
            f"**Failure concepts:** {', '.join(f'`{f.name}`' for f in failures) if failures else 'none'}.",
            "",
            "| rank | concept | failure | support | error in [95% CI] | error out | lift [95% CI] | p (adj.) "
            "| expected from classes | lift within classes [95% CI] | p (adj.) |",
            "|---:|---|:---:|---:|---|---|---|---:|---|---|---:|",
        ]
        names = {c.id: c.name for c in self.concepts}
        for row in self.ranking[:max_rows]:
            lines.append(
                f"| {row.rank} | {row.name} | {_verdict(row, names)} | {row.support} "
                f"| {percent(row.error_in)} [{percent(row.error_in_low)}, {percent(row.error_in_high)}] "
                f"| {percent(row.error_out)} | {number(row.lift)} [{number(row.lift_low)}, {number(row.lift_high)}] "
                f"| {p_value(row.p_adjusted)} | {percent(row.error_in_expected)} "
                f"| {number(row.class_lift)} [{number(row.class_lift_low)}, {number(row.class_lift_high)}] "
                f"| {p_value(row.class_p_adjusted)} |"
            )
        if len(self.ranking) > max_rows:
            lines.append(f"\n… {len(self.ranking) - max_rows} more concepts.")
        accuracy = confusion_accuracy(self.confusion) if self.confusion.numel() else torch.zeros(0)
        gt = self.ground_truth_precision
        gt_names = self.patches.concept_names
        show_gt = gt is not None and gt.numel() > 0 and len(gt_names) == gt.shape[1]
        header = "| id | name | members | coherence | slice accuracy |"
        lines += ["", "## Concepts", "", header + (" best ground-truth match (precision@k) |" if show_gt else "")]
        lines.append("|---:|---|---:|---:|---:|" + ("---|" if show_gt else ""))
        for i, c in enumerate(self.concepts):
            acc = float(accuracy[i]) if i < accuracy.numel() else float("nan")
            line = f"| {c.id} | {c.name} | {int(c.members.numel())} | {number(c.coherence)} | {percent(acc)} |"
            if show_gt and gt is not None:
                j = int(torch.argmax(gt[i]))
                line += f" {gt_names[j]} ({percent(float(gt[i, j]))}) |"
            lines.append(line)
        for name, check in self.ensembles.items():
            lines += ["", f"## Ensemble check `{name}`", ""]
            lines.append("| concept | acc a | acc b | acc ensemble | fixed a | fixed b |")
            lines.append("|---|---:|---:|---:|---:|---:|")
            for i, c in enumerate(self.concepts[: int(check.support.numel())]):
                lines.append(
                    f"| {c.name} | {percent(float(check.accuracy_a[i]))} | {percent(float(check.accuracy_b[i]))} "
                    f"| {percent(float(check.accuracy_ensemble[i]))} | {int(check.fixed_a[i])} "
                    f"| {int(check.fixed_b[i])} |"
                )
        for name, diff in self.diffs.items():
            diag = torch.diagonal(diff, dim1=-2, dim2=-1).mean(-1)
            parts = ", ".join(f"{c.name} {float(diag[i]):+.3f}" for i, c in enumerate(self.concepts[: diag.numel()]))
            lines += ["", f"## Difference `{name}` (mean diagonal change, + = second better)", "", parts]
        return "\n".join(lines) + "\n"


def encode_tensor(t: Tensor) -> dict[str, Any]:
    """A tensor as JSON: dtype, shape and flat data; bool tensors bit-packed in base64; non-finite floats as strings.

    Example:
        >>> encode_tensor(torch.tensor([1.0, float("nan")]))
        {'dtype': 'float32', 'shape': [2], 'data': [1.0, 'nan']}
    """
    t = t.detach().cpu()
    if t.dtype not in _NAMES:
        raise ValueError(f"Expected a tensor of one of the dtypes {sorted(_DTYPES)!r}, but got {t.dtype}.")
    out: dict[str, Any] = {"dtype": _NAMES[t.dtype], "shape": list(t.shape)}
    if t.dtype == torch.bool:
        out["packed"] = base64.b64encode(np.packbits(t.reshape(-1).numpy()).tobytes()).decode("ascii")
    elif t.is_floating_point():
        out["data"] = [_encode_float(x) for x in t.double().reshape(-1).tolist()]
    else:
        out["data"] = t.reshape(-1).tolist()
    return out


def decode_tensor(d: dict[str, Any]) -> Tensor:
    """Inverse of :func:`encode_tensor`.

    Raises:
        ValueError: if the dtype is unknown or the data does not fill the shape.
    """
    name = d.get("dtype")
    if name not in _DTYPES:
        raise ValueError(f"Expected a tensor dtype in {sorted(_DTYPES)!r}, but got {name!r}.")
    shape = [int(s) for s in d["shape"]]
    numel = math.prod(shape)
    if name == "bool":
        bits = np.unpackbits(np.frombuffer(base64.b64decode(d["packed"]), dtype=np.uint8))[:numel]
        flat = torch.from_numpy(bits.astype(bool))
    elif _DTYPES[name].is_floating_point:
        flat = torch.tensor([_decode_float(x) for x in d["data"]], dtype=torch.float64).to(_DTYPES[name])
    else:
        flat = torch.tensor(d["data"], dtype=_DTYPES[name])
    if flat.numel() != numel:
        raise ValueError(f"Expected {numel} values for a tensor of shape {shape!r}, but got {flat.numel()}.")
    return flat.reshape(shape)


def _encode_float(x: float) -> float | str:
    return x if math.isfinite(x) else str(x)  # 'nan', 'inf', '-inf'


def _decode_float(x: float | str) -> float:
    return float(x)


def _maybe(t: Tensor | None) -> dict[str, Any] | None:
    return None if t is None else encode_tensor(t)


def _maybe_decode(d: dict[str, Any] | None) -> Tensor | None:
    return None if d is None else decode_tensor(d)


def _encode_value(v: Any) -> Any:
    """Config/meta values: JSON scalars, lists, str-keyed dicts, tensors (tagged), non-finite floats (tagged)."""
    if isinstance(v, Tensor):
        return {"__tensor__": encode_tensor(v)}
    if isinstance(v, float) and not math.isfinite(v):
        return {"__float__": str(v)}
    if isinstance(v, bool | int | float | str) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _encode_value(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_encode_value(x) for x in v]
    if isinstance(v, np.generic):
        return _encode_value(v.item())
    raise ValueError(
        f"Expected report config/meta values to be JSON scalars, lists, dicts or tensors, but got {type(v).__name__}."
    )


def _decode_value(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"__tensor__"}:
            return decode_tensor(v["__tensor__"])
        if set(v) == {"__float__"}:
            return float(v["__float__"])
        return {k: _decode_value(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_decode_value(x) for x in v]
    return v


def _encode_concept(c: Concept) -> dict[str, Any]:
    return {
        "id": int(c.id),
        "name": c.name,
        "members": encode_tensor(c.members),
        "scores": encode_tensor(c.scores),
        "coherence": _encode_value(float(c.coherence)),
        "meta": _encode_value(c.meta),
    }


def _decode_concept(d: dict[str, Any]) -> Concept:
    return Concept(
        id=int(d["id"]),
        name=str(d["name"]),
        members=decode_tensor(d["members"]),
        scores=decode_tensor(d["scores"]),
        coherence=float(_decode_value(d["coherence"])),
        meta=_decode_value(d.get("meta", {})),
    )


def box_masks(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """The ``(P, H, W)`` bool masks of boxes ``x0, y0, x1, y1`` (exclusive ends).

    Example:
        >>> box_masks(torch.tensor([[1, 0, 3, 1]]), (2, 4)).int()
        tensor([[[0, 1, 1, 0],
                 [0, 0, 0, 0]]], dtype=torch.int32)
    """
    h, w = size
    x0, y0, x1, y1 = (v.view(-1, 1, 1) for v in boxes.long().unbind(1))
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def _encode_masks(p: PatchSet) -> dict[str, Any] | None:
    if p.masks is None:
        return None
    size = (int(p.masks.shape[1]), int(p.masks.shape[2]))
    # Window masks are their boxes: store the size only (a 300-image probe set would otherwise weigh megabytes).
    if p.masks.shape[0] and torch.equal(p.masks.cpu().bool(), box_masks(p.boxes.cpu(), size)):
        return {"from_boxes": list(size)}
    return encode_tensor(p.masks)


def _decode_masks(d: dict[str, Any] | None, boxes: Tensor) -> Tensor | None:
    if d is None:
        return None
    if "from_boxes" in d:
        h, w = (int(v) for v in d["from_boxes"])
        return box_masks(boxes, (h, w))
    return decode_tensor(d)


def _encode_patches(p: PatchSet) -> dict[str, Any]:
    return {
        "image_index": encode_tensor(p.image_index),
        "boxes": encode_tensor(p.boxes),
        "masks": _encode_masks(p),
        "concept_overlap": _maybe(p.concept_overlap),
        "concept_names": list(p.concept_names),
        "method": p.method,
    }


def _decode_patches(d: dict[str, Any]) -> PatchSet:
    boxes = decode_tensor(d["boxes"])
    return PatchSet(
        image_index=decode_tensor(d["image_index"]),
        boxes=boxes,
        masks=_decode_masks(d.get("masks"), boxes),
        concept_overlap=_maybe_decode(d.get("concept_overlap")),
        concept_names=tuple(d.get("concept_names", ())),
        method=str(d.get("method", "")),
    )


def _coverage_line(probe_size: int, min_support: Any) -> list[str]:
    """Which failures the probe set is too small to show (a failure concept needs ``min_support`` images)."""
    if not isinstance(min_support, int) or min_support < 1 or probe_size < 1:
        return []
    rate = detectable_rate(probe_size, min_support)
    if math.isinf(rate):
        return [f"A failure concept needs {min_support} probe images; {probe_size} cannot show one."]
    return [f"A failure concept needs {min_support} of the {probe_size} probe images: a failure in fewer than "
            f"{100 * rate:.0f}% of images may go unseen (`debugger.probe_coverage`)."]


def _verdict(row: ConceptFailure, names: dict[int, str]) -> str:
    if row.merged_into is not None:
        return f"merged into `{names.get(row.merged_into, row.merged_into)}`"
    if row.is_failure:
        return "yes"
    return "class mix" if row.class_confounded else ""
