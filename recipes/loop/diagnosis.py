"""Diagnosis: a concept report on a seeded probe set, the failure ranking of the data's annotated concepts, how
dark each annotated concept is, and the per-concept test metrics; stored in the run directory and reused on
resume when the weights and settings are the same."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from debugger.confusion import concept_confusion
from debugger.contract import IMAGE, unpack_batch
from debugger.failures import Darkening, annotated_membership, concept_darkening
from debugger.fingerprint import model_fingerprint
from debugger.pipeline import ConceptAnalysis
from debugger.probes import select_probe_indices
from debugger.ranking import ConceptFailure, rank_failures
from debugger.report import ConceptReport
from debugger.text import number, p_value, percent
from recipes.baseline import slice_metrics
from recipes.data.base import ContractDataModule
from recipes.loop.checks import check_contract_data, check_data, check_layer, default_layer
from recipes.loop.run import LoopError, RunDirectory
from recipes.loop.tables import flat_metrics, format_metrics


@dataclass
class AnnotatedRanking:
    """The failure ranking and confusion counts of the data's annotated concepts (and ``clean``) on the probe set.

    Args:
        names: the slices: the annotated concepts, then ``clean`` (no concept at all).
        counts: confusion counts per slice.
        overall: confusion counts over the whole probe set.
        ranking: the slices ranked by how much more the model fails inside them (``concept`` indexes ``names``).
        darkening: concept name → how much brightness it removes under its masks (concepts with masks only).

    Shape:
        - counts: ``(S, K, K)`` with ``S = len(names)``
        - overall: ``(K, K)``

    Example:
        >>> ranked = AnnotatedRanking(["shadow", "clean"], torch.zeros(2, 3, 3, dtype=torch.long),
        ...                           torch.zeros(3, 3, dtype=torch.long), [])
        >>> AnnotatedRanking.from_dict(ranked.to_dict()).names
        ['shadow', 'clean']
    """

    names: list[str]
    counts: Tensor
    overall: Tensor
    ranking: list[ConceptFailure]
    darkening: dict[str, Darkening] = field(default_factory=dict)

    def failures(self) -> list[ConceptFailure]:
        """The ranked slices that are failures, ``clean`` left out."""
        return [r for r in self.ranking if r.is_failure and r.name != "clean"]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (what ``<name>.diagnosis.json`` holds under ``annotated``)."""
        return {"names": list(self.names), "counts": self.counts.tolist(), "overall": self.overall.tolist(),
                "ranking": [r.to_dict() for r in self.ranking],
                "darkening": {k: d.to_dict() for k, d in self.darkening.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AnnotatedRanking:
        return cls(list(d["names"]), torch.tensor(d["counts"], dtype=torch.long),
                   torch.tensor(d["overall"], dtype=torch.long),
                   [ConceptFailure.from_dict(r) for r in d["ranking"]],
                   {k: Darkening.from_dict(v) for k, v in (d.get("darkening") or {}).items()})


@dataclass
class Diagnosis:
    """What :func:`diagnose` found.

    Args:
        report: the concept report of the discovered concepts.
        annotated: the annotated concepts' ranking; None for data without concept annotations.
        metrics: the test metrics per concept slice (:func:`recipes.baseline.slice_metrics`); empty when not asked.
        concept_names: the data's annotated concepts.
    """

    report: ConceptReport
    annotated: AnnotatedRanking | None
    metrics: dict[str, Any]
    concept_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Everything but the report (stored on its own as ``<name>.json``): ``<name>.diagnosis.json``."""
        return {"annotated": None if self.annotated is None else self.annotated.to_dict(), "metrics": self.metrics,
                "concept_names": list(self.concept_names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], report: ConceptReport) -> Diagnosis:
        annotated = None if d["annotated"] is None else AnnotatedRanking.from_dict(d["annotated"])
        return cls(report, annotated, dict(d["metrics"]), tuple(d["concept_names"]))


def probe_loader(dataset: Any, size: int, seed: int, batch_size: int = 64) -> DataLoader:
    """A fixed, seeded subset of ``dataset`` (``size`` samples) as a DataLoader, in index order."""
    indices = select_probe_indices(len(dataset), size, seed)
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


def probe_images(loader: Iterable[Any]) -> Tensor:
    """The images of a probe loader, stacked in its order (the columns of the report's ``membership``).

    Shape:
        - output: ``(N, C, H, W)``
    """
    return torch.cat([unpack_batch(batch).images for batch in loader])


def probe_folder(root: str, datamodule: ContractDataModule) -> Any:
    """A labelled folder of deployment images (``root/<class>/<image>``) as a probe set for ``datamodule``'s model:
    read at the training images' size and channels, its classes indexed by the training data's class list.

    Raises:
        LoopError: if ``root`` is not such a folder or names a class the training data lacks.
    """
    from recipes.data.folder import ImageFolderDataset

    check_contract_data(datamodule)
    train = datamodule.dataset("train")
    sample = train[0]
    image = sample[IMAGE] if isinstance(sample, Mapping) else sample[0]
    classes = [str(c) for c in getattr(train, "classes", ())]
    if not classes:
        classes = [str(i) for i in range(int(getattr(datamodule, "num_classes", 0) or 0))]
    try:
        return ImageFolderDataset(root, "all", int(image.shape[-1]), int(image.shape[0]),  # type: ignore[arg-type]
                                  classes=classes)
    except (FileNotFoundError, ValueError) as err:
        raise LoopError(f"Expected `--probe_root` to be a folder of labelled images, root/<class>/<image> with the "
                        f"training classes {classes}, but got {root!r}: {err}") from err


@torch.no_grad()
def predict_probe(model: nn.Module, loader: Iterable[Any]) -> dict[str, Tensor]:
    """Predictions, softmax probabilities and the contract fields over ``loader`` (the model's mode restored).

    Returns:
        ``pred``, ``prob``, ``target``, and ``concepts`` / ``concept_masks`` when the batches carry them.
    """
    was = model.training
    model.eval()
    preds, probs, targets, concepts, masks = [], [], [], [], []
    try:
        for batch in loader:
            b = unpack_batch(batch)
            logits = model(b.images)
            preds.append(logits.argmax(1))
            probs.append(logits.float().softmax(1))
            targets.append(b.targets)
            if b.concepts is not None:
                concepts.append(b.concepts)
            if b.concept_masks is not None:
                masks.append(b.concept_masks)
    finally:
        model.train(was)
    out = {"pred": torch.cat(preds), "prob": torch.cat(probs), "target": torch.cat(targets)}
    if concepts:
        out["concepts"] = torch.cat(concepts)
    if masks:
        out["concept_masks"] = torch.cat(masks)
    return out




def annotated_ranking(model: nn.Module, loader: Iterable[Any], concept_names: Sequence[str], num_classes: int,
                      min_support: int = 5, seed: int = 0) -> AnnotatedRanking | None:
    """Failure ranking and confusion counts of the annotated concepts (and ``clean``) on the probe batches.

    Returns:
        the ranking without ``darkening`` (see :func:`annotated_darkening`), or None for data without annotations.
    """
    p = predict_probe(model, loader)
    seg = p["target"].dim() == 3
    membership = annotated_membership(p.get("concepts"), p.get("concept_masks"), seg)
    if membership is None or not concept_names:
        return None
    names = [*concept_names, "clean"]
    counts = concept_confusion(p["pred"], p["target"], membership, num_classes)
    overall = concept_confusion(p["pred"], p["target"], torch.ones(1, len(p["target"]), dtype=torch.bool),
                                num_classes)[0]
    ranking = rank_failures(p["pred"] != p["target"], membership, names=names, min_support=min_support,
                            generator=torch.Generator().manual_seed(seed))
    return AnnotatedRanking(names, counts, overall, list(ranking))


def annotated_darkening(loader: Iterable[Any], concept_names: Sequence[str], min_images: int = 5
                        ) -> dict[str, Darkening]:
    """How much brightness each annotated concept removes under its mask, over the probe images that carry it.

    Per image :func:`~callbacks.failure_driven_augmentation.concept_darkening` (over the object's pixels when
    the batches carry an ``object_mask``, else the whole image), summarised as a
    :class:`~callbacks.failure_driven_augmentation.Darkening`. Concepts without masks, or measured on fewer than
    ``min_images`` images, are left out; so is everything for data without concept masks.

    Returns:
        concept name → median and 10th/90th percentiles of the fraction of brightness removed, and the image count.
    """
    values: dict[str, list[Tensor]] = {name: [] for name in concept_names}
    for batch in loader:
        b = unpack_batch(batch)
        if b.concept_masks is None or b.concepts is None or b.images.dim() != 4:
            return {}
        obj = batch.get("object_mask") if isinstance(batch, Mapping) else None
        for k, name in enumerate(concept_names[: b.concepts.shape[1]]):
            sel = b.concepts[:, k] > 0
            if not bool(sel.any()):
                continue
            values[name].append(concept_darkening(b.images[sel], b.concept_masks[sel, k],
                                                  obj[sel] if isinstance(obj, Tensor) else None))
    out: dict[str, Darkening] = {}
    for name, parts in values.items():
        d = Darkening.from_values(torch.cat(parts), min_images) if parts else None
        if d is not None:
            out[name] = d
    return out


def diagnose(
    model: nn.Module,
    datamodule: ContractDataModule,
    layer: str | None = None,
    run: RunDirectory | None = None,
    name: str = "report",
    probe_size: int = 256,
    n_concepts: int | None = 32,
    top_k: int = 50,
    seed: int = 0,
    split: str = "val",
    metrics_split: str | None = "test",
    analysis_kwargs: Mapping[str, Any] | None = None,
    probe: Any | None = None,
) -> Diagnosis:
    """Concept analysis of ``model`` on a probe set of ``split`` (or of ``probe``, a dataset of deployment images,
    :func:`probe_folder`), the annotated failure ranking, and metrics.

    The analysis runs at :class:`~debugger.pipeline.ConceptAnalysis`' measured defaults (superpixels, roi
    embedding, member slices, class control, merged near-duplicates; ``docs/concepts.md``) with ``n_concepts``
    and ``top_k``.

    Writes ``<name>.json`` (the :class:`~debugger.report.ConceptReport`; schema in ``docs/report-schema.md``),
    ``<name>.md`` and TensorBoard text/scalars under ``tb/<name>`` into ``run``.

    Raises:
        LoopError: for an unknown layer or data that does not fit the model.
    """
    layer = layer or default_layer(model)
    check_layer(model, layer)
    check_data(model, datamodule, split)
    dataset = datamodule.dataset(split) if probe is None else probe
    loader = probe_loader(dataset, probe_size, seed)
    concept_names = tuple(getattr(datamodule, "concept_names", ()) or ())
    class_names = [str(c) for c in getattr(dataset, "classes", ())] or None
    kwargs: dict[str, Any] = {"n_concepts": n_concepts, "top_k": top_k, "seed": seed}
    kwargs.update(analysis_kwargs or {})
    try:
        report = ConceptAnalysis(model, layer, **kwargs).run(
            loader, class_names=class_names, concept_names=concept_names or None,
            meta={"split": split if probe is None else "probe_root", "probe_size": len(loader.dataset),  # type: ignore[arg-type]
                  "probe_size_requested": probe_size, "probe_seed": seed,
                  "probe_root": getattr(probe, "root", None) if probe is not None else None,
                  "fingerprint": model_fingerprint(model)},
        )
    except ValueError as err:
        if "distinct embeddings" not in str(err) and "at least one concept" not in str(err):
            raise
        probe_count = len(loader.dataset)  # type: ignore[arg-type]
        raise LoopError(
            f"Expected the {probe_count} probe images of split {split!r} to give enough distinct "
            f"patches for {n_concepts} concepts, but: {err} Use more probe images (`probe_size`, a larger "
            "split) or fewer concepts (`n_concepts`)."
        ) from err
    annotated = annotated_ranking(model, loader, concept_names, report.num_classes, seed=seed)
    if annotated is not None:
        annotated.darkening = annotated_darkening(loader, concept_names)
        stored = annotated.to_dict()
        report.meta["annotated"] = {k: stored[k] for k in ("names", "ranking", "darkening")}
    metrics = slice_metrics(model, datamodule.dataset(metrics_split)) if metrics_split else {}
    diagnosis = Diagnosis(report, annotated, metrics, concept_names)
    if run is not None:
        report.save(run.file(f"{name}.json"))
        run.write_text(f"{name}.md", diagnosis_markdown(diagnosis))
        _log_diagnosis(run, name, diagnosis)
    return diagnosis


def diagnose_once(
    model: nn.Module,
    datamodule: ContractDataModule,
    layer: str | None,
    run: RunDirectory | None,
    name: str = "report",
    probe_size: int = 256,
    n_concepts: int | None = 32,
    seed: int = 0,
    probe: Any | None = None,
    probe_source: str = "val",
) -> tuple[Diagnosis, bool]:
    """:func:`diagnose`, or the diagnosis ``run`` already holds for the same weights and settings.

    A finished diagnosis is stored as ``<name>.json`` (the report) and ``<name>.diagnosis.json`` (annotated
    ranking, test metrics), both written atomically, and recorded in ``state.json`` under ``diagnose:<name>`` with
    a fingerprint of the model's weights, the layer and the analysis settings; a resumed run reuses it only when
    all of these match (new weights — e.g. a retrained stage — are diagnosed again). ``probe`` is a probe dataset
    other than the validation split (:func:`probe_folder`), ``probe_source`` names it in the settings.

    Returns:
        the diagnosis and whether it was reused.
    """
    layer = layer or default_layer(model)
    key = {"fingerprint": model_fingerprint(model), "layer": layer, "probe_size": probe_size,
           "n_concepts": n_concepts, "seed": seed, "probe": probe_source}
    stage = f"diagnose:{name}"
    stored = run.done(stage) if run is not None else None
    if run is not None and stored is not None and all(stored.get(k) == v for k, v in key.items()):
        try:
            return Diagnosis.from_dict(run.read_json(stored["file"]),
                                       ConceptReport.load(run.file(stored["report"]))), True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # unreadable: diagnosed again below
    d = diagnose(model, datamodule, layer, run, name, probe_size, n_concepts, seed=seed, probe=probe)
    if run is not None:
        run.write_json(f"{name}.diagnosis.json", d.to_dict())
        run.mark_done(stage, report=f"{name}.json", file=f"{name}.diagnosis.json", **key)
    return d, False


def diagnosis_markdown(d: Diagnosis, title: str | None = None) -> str:
    """The report's markdown, the annotated failure ranking and the per-concept metrics."""
    parts = [f"# {title}\n" if title else "", d.report.to_markdown()]
    if d.annotated is not None:
        parts += ["\n## Annotated concepts (ground truth of the data)\n",
                  "| rank | concept | failure | support | error in | error out | lift | p (adj.) |",
                  "|---:|---|:---:|---:|---:|---:|---:|---:|"]
        for r in d.annotated.ranking:
            parts.append(f"| {r.rank} | {r.name} | {'yes' if r.is_failure else ''} | {r.support} "
                         f"| {percent(r.error_in)} | {percent(r.error_out)} | {number(r.lift)} "
                         f"| {p_value(r.p_adjusted)} |")
    if d.metrics:
        parts += ["\n## Test metrics per concept\n", "```", format_metrics(d.metrics, d.concept_names), "```"]
    return "\n".join(parts) + "\n"


def _log_diagnosis(run: RunDirectory, name: str, d: Diagnosis) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.tensorboard / name))
    try:
        writer.add_text("report", diagnosis_markdown(d))
        for key, value in flat_metrics(d.metrics, d.concept_names).items():
            writer.add_scalar(f"metrics/{key}", value)
        writer.add_scalar("concepts/failures", len(d.report.failures))
    finally:
        writer.close()
