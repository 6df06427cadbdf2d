"""How each benchmark is scored: one :class:`Protocol` per official toolkit, the metric part of a dataset's record
(:data:`~srft_peft.tracking.datasets.DATASETS`). :func:`~srft_peft.tracking.metrics.evaluate_results` applies them.

docs/tracking.md ("Metric conventions per benchmark") gives the source of each.

Example:
    >>> PROTOCOLS["gtot"].pr_threshold, PROTOCOLS["lasher"].absent
    (5.0, 'lasher')
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ABSENT_RULES", "PROTOCOLS", "Protocol", "check_absent_rule"]

#: How frames without a visible target are scored: left out (``exclude``), scored like any frame against the empty
#: box (``miss``), or LasHeR's rule (any coordinate <= 0 is absent; a hit for PR/NPR, a miss for SR).
ABSENT_RULES = ("exclude", "miss", "lasher")


def check_absent_rule(rule: str) -> None:
    """Raise ``ValueError`` unless ``rule`` is one of :data:`ABSENT_RULES`."""
    if rule not in ABSENT_RULES:
        raise ValueError(f"absent rule must be one of {ABSENT_RULES}, got {rule!r}")


@dataclass(frozen=True)
class Protocol:
    """How a benchmark is scored."""

    name: str = field(metadata={"help": "Protocol name."})
    absent: str = field(default="exclude", metadata={"help": f"Absent-frame rule, one of {ABSENT_RULES}."})
    pr_threshold: float = field(default=20.0, metadata={"help": "Centre-error threshold (px) of the reported PR."})
    npr_threshold: float = field(default=0.2, metadata={"help": "Normalised threshold of the reported NPR."})
    two_gt: bool = field(default=False, metadata={"help": "Also report MPR/MSR over the two ground truths."})
    pool_frames: bool = field(
        default=False, metadata={"help": "Pool frames over sequences (GTOT) instead of averaging sequences."}
    )
    auc_rule: str = field(default="mean", metadata={"help": "'mean' or 'trapezoid' success AUC."})
    long_term: bool = field(default=False, metadata={"help": "Also report DepthTrack/VOT-LT precision/recall/F."})
    init_from_gt: bool = field(
        default=True, metadata={"help": "Replace the frame-0 prediction by the ground truth (else score it as written)."}
    )
    fix_invalid: bool = field(
        default=True,
        metadata={"help": "Give a prediction with w <= 0, h <= 0 or NaN the previous box (else score it as written)."},
    )
    strict_precision: bool = field(
        default=False, metadata={"help": "Pixel precision counts errors < θ (GTOT) instead of <= θ."}
    )

    def __post_init__(self) -> None:
        check_absent_rule(self.absent)
        if self.auc_rule not in ("mean", "trapezoid"):
            raise ValueError(f"Protocol.auc_rule must be 'mean' or 'trapezoid', got {self.auc_rule!r}")


# Each benchmark's conventions; docs/tracking.md ("Metric conventions per benchmark") gives the source of each.
PROTOCOLS: dict[str, Protocol] = {
    "lasher": Protocol("lasher", absent="lasher"),
    "visevent": Protocol("visevent", absent="lasher"),  # LaSOT-style toolkit: same absent-frame handling
    "coesot": Protocol("coesot", absent="lasher"),  # the VisEvent group's LaSOT-style MATLAB toolkit (SR, PR, NPR)
    # The RGBT234 and GTOT toolkits score every submitted box as written, frame 0 and empty boxes included.
    "rgbt234": Protocol("rgbt234", absent="miss", two_gt=True, init_from_gt=False, fix_invalid=False),
    # RGBT210 (a subset of RGBT234, same group and toolkit) has one ground truth (init.txt): PR / SR, no MPR / MSR.
    "rgbt210": Protocol("rgbt210", absent="miss", init_from_gt=False, fix_invalid=False),
    "gtot": Protocol(
        "gtot",
        absent="miss",
        pr_threshold=5.0,
        two_gt=True,
        pool_frames=True,
        auc_rule="trapezoid",
        init_from_gt=False,
        fix_invalid=False,
        strict_precision=True,
    ),
    "depthtrack": Protocol("depthtrack", absent="exclude", long_term=True),
    "fe108": Protocol("fe108", absent="exclude"),  # OTB-style one-pass evaluation (the paper's RSR / RPR)
    # The generic one-pass evaluation: sequences of no benchmark (Sequence.dataset == "") and the plain RGB sets.
    "default": Protocol("default", absent="exclude"),
}
