"""Comparing two models on the same concepts: confusion differences per concept and the ensemble check."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from debugger.confusion import concept_confusion, confusion_difference, ensemble_check
from debugger.failures import annotated_membership
from debugger.pipeline import ConceptAnalysis
from debugger.report import ConceptReport
from debugger.text import percent
from recipes.data.base import ContractDataModule
from recipes.loop.checks import check_data
from recipes.loop.diagnosis import diagnose, predict_probe, probe_loader
from recipes.loop.run import LoopError, RunDirectory


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    datamodule: ContractDataModule,
    layer: str | None = None,
    run: RunDirectory | None = None,
    probe_size: int = 128,
    n_concepts: int | None = 8,
    top_k: int = 30,
    seed: int = 0,
    split: str = "val",
) -> dict[str, Any]:
    """Concept-conditioned confusion differences between two models and the ensemble check (seed 000 §7.1).

    Concepts are found once, on model A; both models are evaluated on the same slices (discovered and annotated).

    Returns:
        ``{"report": ConceptReport with diffs["b"] and ensembles["b"], "annotated": {...} or None}``.
    """
    d = diagnose(model_a, datamodule, layer, None, probe_size=probe_size, n_concepts=n_concepts, top_k=top_k,
                 seed=seed, split=split, metrics_split=None)
    check_data(model_b, datamodule, split)
    loader = probe_loader(datamodule.dataset(split), probe_size, seed)
    analysis = ConceptAnalysis(model_a, d.report.layer, n_concepts=n_concepts, top_k=top_k, seed=seed)
    try:
        report = analysis.compare(d.report, model_b, loader, name="b")
    except ValueError as err:
        raise LoopError(f"Expected model B to be comparable with model A on the same data, but: {err}") from err
    annotated = None
    if d.annotated is not None:
        pa, pb = predict_probe(model_a, loader), predict_probe(model_b, loader)
        seg = pa["target"].dim() == 3
        membership = annotated_membership(pa.get("concepts"), pa.get("concept_masks"), seg)
        k = report.num_classes
        cm_a = concept_confusion(pa["pred"], pa["target"], membership, k)  # type: ignore[arg-type]
        cm_b = concept_confusion(pb["pred"], pb["target"], membership, k)  # type: ignore[arg-type]
        check = ensemble_check(pa["prob"], pb["prob"], pa["target"], membership, k)  # type: ignore[arg-type]
        annotated = {
            "names": d.annotated.names,
            "diff": confusion_difference(cm_a, cm_b),
            "accuracy_a": check.accuracy_a.tolist(),
            "accuracy_b": check.accuracy_b.tolist(),
            "accuracy_ensemble": check.accuracy_ensemble.tolist(),
            "fixed_a": check.fixed_a.tolist(),
            "fixed_b": check.fixed_b.tolist(),
            "support": check.support.tolist(),
        }
        report.meta["annotated_comparison"] = {k2: v for k2, v in annotated.items() if k2 != "diff"}
    result = {"report": report, "annotated": annotated}
    if run is not None:
        report.save(run.file("report.json"))
        run.write_text("report.md", compare_markdown(result))
    return result


def compare_markdown(result: Mapping[str, Any]) -> str:
    """The comparison's report as markdown, with the annotated concepts' accuracies of A, B and their ensemble."""
    report: ConceptReport = result["report"]
    lines = ["# conceptfix compare: model A vs model B\n", report.to_markdown()]
    a = result.get("annotated")
    if a is not None:
        lines += ["\n## Annotated concepts: accuracy of A, B and their ensemble (averaged softmax)\n",
                  "| slice | n | acc A | acc B | acc ensemble | A's errors fixed | B's errors fixed "
                  "| diag. change B−A |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        diag = torch.diagonal(a["diff"], dim1=-2, dim2=-1).nanmean(-1)
        for i, name in enumerate(a["names"]):
            lines.append(f"| {name} | {a['support'][i]} | {percent(a['accuracy_a'][i])} "
                         f"| {percent(a['accuracy_b'][i])} | {percent(a['accuracy_ensemble'][i])} "
                         f"| {a['fixed_a'][i]} | {a['fixed_b'][i]} | {float(diag[i]):+.3f} |")
    return "\n".join(lines) + "\n"


