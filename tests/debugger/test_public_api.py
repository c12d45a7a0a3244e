"""The engine's public API is importable from ``debugger`` and loads its heavy parts only on use."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import debugger


def test_every_exported_name_resolves_to_the_submodule_object():
    from debugger.matching import TransformMatcher
    from debugger.pipeline import ConceptAnalysis
    from debugger.report import ConceptReport

    missing = [name for name in debugger.__all__ if getattr(debugger, name, None) is None]
    assert missing == []
    assert debugger.ConceptAnalysis is ConceptAnalysis
    assert debugger.ConceptReport is ConceptReport
    assert debugger.TransformMatcher is TransformMatcher


def test_failure_evidence_and_probe_selection_are_public():
    from debugger.failures import FailureEvidence, evidence_from_report
    from debugger.probes import select_probe_indices

    assert debugger.FailureEvidence is FailureEvidence
    assert debugger.evidence_from_report is evidence_from_report
    assert debugger.select_probe_indices is select_probe_indices
    assert {"Darkening", "concept_darkening", "annotated_membership", "slice_quality"} <= set(debugger.__all__)


def test_the_seeds_other_lenses_are_public():
    from debugger.channels import ChannelAttribution
    from debugger.dissection import dissect
    from debugger.net2vec import Net2Vec
    from debugger.saliency.meta import MetaSaliency
    from debugger.similarity import similarity_overlay

    assert debugger.dissect is dissect
    assert debugger.Net2Vec is Net2Vec
    assert debugger.MetaSaliency is MetaSaliency
    assert debugger.similarity_overlay is similarity_overlay
    assert debugger.ChannelAttribution is ChannelAttribution


def test_an_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'not_a_thing'"):
        debugger.not_a_thing  # noqa: B018


def test_importing_the_package_does_not_load_matplotlib_or_sklearn():
    code = "import sys, debugger; print('matplotlib' in sys.modules, 'sklearn' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "False"]
