"""The analysis functions the loop uses from the library, imported in one place."""

from __future__ import annotations

from augment.policy import derive_policies, why_no_rule
from debugger.failures import (
    Darkening,
    FailureEvidence,
    annotated_membership,
    concept_darkening,
    evidence_from_report,
)
from debugger.probes import select_probe_indices

__all__ = [
    "Darkening",
    "FailureEvidence",
    "annotated_membership",
    "concept_darkening",
    "derive_policies",
    "evidence_from_report",
    "select_probe_indices",
    "why_no_rule",
]
