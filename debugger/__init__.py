"""The analysis engine: capture, patches, concepts, confusion, saliency, reports. Never imports Lightning.

The public API is importable from here (``from debugger import ConceptAnalysis``). Names are loaded on first
use, so ``import debugger`` stays cheap: matplotlib (renderers) and scikit-learn (discovery) load only when a
name that needs them is touched.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from debugger.contract import Batch, Sample, as_sample, repack_batch, unpack_batch

# public name -> submodule that defines it
_LAZY: dict[str, str] = {
    # capture
    "ActivationCapture": "capture",
    "CaptureResult": "capture",
    "capture": "capture",
    "run_capture": "capture",
    "stream_capture": "capture",
    "layer_names": "capture",
    "resolve_layer": "capture",
    "preserve_training_mode": "capture",
    # fingerprints of weights
    "model_fingerprint": "fingerprint",
    # patches
    "extract_patches": "patches",
    "slic_superpixels": "patches",
    "quickshift_superpixels": "patches",
    "sliding_windows": "patches",
    "PatchSet": "structures",
    "Concept": "structures",
    # embeddings
    "embed_patches": "embed",
    "PatchEmbedder": "embed",
    "embed_images": "embed",
    # human-guided concept extractors and active learning
    "ConceptExtractor": "extractor",
    "ActiveLearner": "active",
    "Oracle": "active",
    "query_order": "active",
    "precision_at_k": "active",
    # discovery
    "discover_concepts": "discovery",
    "ConceptDiscovery": "discovery",
    "select_k": "discovery",
    "concept_precision": "discovery",
    # concept-conditioned confusion
    "ConceptConfusion": "confusion",
    "concept_confusion": "confusion",
    "concept_membership": "confusion",
    "confusion_difference": "confusion",
    "ensemble_check": "confusion",
    # failure ranking and failure evidence
    "ConceptFailure": "ranking",
    "rank_failures": "ranking",
    "FailureEvidence": "failures",
    "Darkening": "failures",
    "concept_darkening": "failures",
    "annotated_membership": "failures",
    "slice_quality": "failures",
    "evidence_from_report": "failures",
    "evidence_from_ranking": "failures",
    # probe selection
    "select_probe_indices": "probes",
    "ProbeCoverage": "probes",
    "probe_coverage": "probes",
    "member_slices": "slices",
    # the pipeline and its report
    "ConceptAnalysis": "pipeline",
    "ConceptReport": "report",
    # failure concept → transform, without labels
    "TransformMatcher": "matching",
    "TransformMatch": "matching",
    "MatchResult": "matching",
    "ClaimTable": "matching",
    "match_transforms": "matching",
    "measure_claims": "matching",
    # renderers
    "confusion_heatmap": "render",
    "concept_gallery": "render",
    "tsne_grid": "render",
    "report_images": "render",
    # TCAV
    "CAV": "tcav",
    "CAVCache": "tcav",
    "ExampleSet": "tcav",
    "TCAV": "tcav",
    "TCAVResult": "tcav",
    # the seeds' other lenses
    "Dissection": "dissection",
    "dissect": "dissection",
    "dissection_iou": "dissection",
    "activation_thresholds": "dissection",
    "Net2Vec": "net2vec",
    "ConceptVector": "net2vec",
    "SimilarityOverlay": "similarity",
    "similarity_overlay": "similarity",
    "location_similarity": "similarity",
    "nmf_groups": "similarity",
    "MetaSaliency": "saliency",
    "meta_saliency": "saliency",
    "ChannelAttribution": "channels",
    "ChannelMasks": "channels",
    "channel_attribution": "channels",
    "class_channel_masks": "channels",
}

__all__ = [
    "CAV",
    "CAVCache",
    "Batch",
    "ExampleSet",
    "Sample",
    "TCAV",
    "TCAVResult",
    "as_sample",
    "repack_batch",
    "unpack_batch",
    "ActivationCapture",
    "CaptureResult",
    "capture",
    "run_capture",
    "stream_capture",
    "layer_names",
    "resolve_layer",
    "preserve_training_mode",
    "model_fingerprint",
    "extract_patches",
    "slic_superpixels",
    "quickshift_superpixels",
    "sliding_windows",
    "PatchSet",
    "Concept",
    "embed_patches",
    "PatchEmbedder",
    "embed_images",
    "ConceptExtractor",
    "ActiveLearner",
    "Oracle",
    "query_order",
    "precision_at_k",
    "discover_concepts",
    "ConceptDiscovery",
    "select_k",
    "concept_precision",
    "ConceptConfusion",
    "concept_confusion",
    "concept_membership",
    "confusion_difference",
    "ensemble_check",
    "ConceptFailure",
    "rank_failures",
    "FailureEvidence",
    "Darkening",
    "concept_darkening",
    "annotated_membership",
    "slice_quality",
    "evidence_from_report",
    "evidence_from_ranking",
    "select_probe_indices",
    "ProbeCoverage",
    "probe_coverage",
    "member_slices",
    "ConceptAnalysis",
    "ConceptReport",
    "TransformMatcher",
    "TransformMatch",
    "MatchResult",
    "ClaimTable",
    "match_transforms",
    "measure_claims",
    "confusion_heatmap",
    "concept_gallery",
    "tsne_grid",
    "report_images",
    "Dissection",
    "dissect",
    "dissection_iou",
    "activation_thresholds",
    "Net2Vec",
    "ConceptVector",
    "SimilarityOverlay",
    "similarity_overlay",
    "location_similarity",
    "nmf_groups",
    "MetaSaliency",
    "meta_saliency",
    "ChannelAttribution",
    "ChannelMasks",
    "channel_attribution",
    "class_channel_masks",
]

if TYPE_CHECKING:
    from debugger.active import ActiveLearner, Oracle, precision_at_k, query_order
    from debugger.capture import (
        ActivationCapture,
        CaptureResult,
        capture,
        layer_names,
        preserve_training_mode,
        resolve_layer,
        run_capture,
        stream_capture,
    )
    from debugger.channels import ChannelAttribution, ChannelMasks, channel_attribution, class_channel_masks
    from debugger.confusion import (
        ConceptConfusion,
        concept_confusion,
        concept_membership,
        confusion_difference,
        ensemble_check,
    )
    from debugger.discovery import ConceptDiscovery, concept_precision, discover_concepts, select_k
    from debugger.dissection import Dissection, activation_thresholds, dissect, dissection_iou
    from debugger.embed import PatchEmbedder, embed_images, embed_patches
    from debugger.extractor import ConceptExtractor
    from debugger.failures import (
        Darkening,
        FailureEvidence,
        annotated_membership,
        concept_darkening,
        evidence_from_ranking,
        evidence_from_report,
        slice_quality,
    )
    from debugger.fingerprint import model_fingerprint
    from debugger.matching import (
        ClaimTable,
        MatchResult,
        TransformMatch,
        TransformMatcher,
        match_transforms,
        measure_claims,
    )
    from debugger.net2vec import ConceptVector, Net2Vec
    from debugger.patches import extract_patches, quickshift_superpixels, slic_superpixels, sliding_windows
    from debugger.pipeline import ConceptAnalysis
    from debugger.probes import ProbeCoverage, probe_coverage, select_probe_indices
    from debugger.ranking import ConceptFailure, rank_failures
    from debugger.render import concept_gallery, confusion_heatmap, report_images, tsne_grid
    from debugger.report import ConceptReport
    from debugger.saliency import MetaSaliency, meta_saliency
    from debugger.similarity import SimilarityOverlay, location_similarity, nmf_groups, similarity_overlay
    from debugger.slices import member_slices
    from debugger.structures import Concept, PatchSet
    from debugger.tcav import CAV, TCAV, CAVCache, ExampleSet, TCAVResult


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'debugger' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"debugger.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
