"""conceptfix callbacks: what users add to a Lightning Trainer to debug a model while it trains.

Every callback works with Trainers of both ``pytorch_lightning`` and ``lightning.pytorch``::

    from callbacks import ConceptMonitor, ConfusionMonitor, SaliencyMonitor
    trainer = Trainer(callbacks=[ConceptMonitor("layer2"), ConfusionMonitor(), SaliencyMonitor("layer3")])

or ``Trainer(callbacks=default_monitors(concept_layer="layer2", saliency_layer="layer3"))``.

Callbacks talk through one typed channel (:mod:`callbacks.findings`): monitors publish findings
(:class:`ConceptReportFinding`, :class:`SliceConfusion`, :class:`TCAVFinding`, :class:`PolicyFinding`) that the
callbacks after them read; a consumer whose producer is missing or comes after it fails in ``setup()``.
"""

from __future__ import annotations

from typing import Any

from callbacks._base import Monitor
from callbacks._probe import ProbeSet, RunContext
from callbacks.concept_monitor import ConceptMonitor
from callbacks.confusion_monitor import ConfusionMonitor
from callbacks.failure_driven_augmentation import FailureDrivenAugmentation
from callbacks.findings import ConceptReportFinding, Finding, Need, PolicyFinding, SliceConfusion, TCAVFinding
from callbacks.joint_batch import JointBatchTraining
from callbacks.saliency_monitor import SaliencyMonitor
from callbacks.tcav_monitor import TCAVMonitor

__all__ = [
    "CALLBACKS",
    "ConceptMonitor",
    "ConceptReportFinding",
    "ConfusionMonitor",
    "FailureDrivenAugmentation",
    "Finding",
    "JointBatchTraining",
    "Monitor",
    "Need",
    "PolicyFinding",
    "ProbeSet",
    "RunContext",
    "SaliencyMonitor",
    "SliceConfusion",
    "TCAVFinding",
    "TCAVMonitor",
    "default_monitors",
]

#: Every public callback class (the contract tests run over this registry).
CALLBACKS: tuple[type, ...] = (
    ConceptMonitor,
    ConfusionMonitor,
    FailureDrivenAugmentation,
    JointBatchTraining,
    SaliencyMonitor,
    TCAVMonitor,
)


def default_monitors(concept_layer: str, saliency_layer: str | None = None, **common: Any) -> list[Monitor]:
    """The default monitor set at its default cadence (every epoch): concepts, then confusion, then saliency.

    The ConceptMonitor comes first so the ConfusionMonitor of the same epoch ranks its fresh concepts.
    ``common`` options (``every_n_epochs``, ``seed``, ``max_seconds`` ...) go to all three.

    Example:
        >>> [type(m).__name__ for m in default_monitors("layer2", "layer3")]
        ['ConceptMonitor', 'ConfusionMonitor', 'SaliencyMonitor']
    """
    return [
        ConceptMonitor(concept_layer, **common),
        ConfusionMonitor(**common),
        SaliencyMonitor(saliency_layer or concept_layer, **common),
    ]
