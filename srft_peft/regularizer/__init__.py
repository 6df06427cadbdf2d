"""Applying SRFT: the prior term, the transfer term, their flat-buffer layout and the per-step engine."""

from .engine import SRFTEngine, unwrap_optimizer
from .layout import FlatLayout
from .prior_term import PriorTerm
from .transfer import TransferTerm, rank_damping

__all__ = ["FlatLayout", "PriorTerm", "SRFTEngine", "TransferTerm", "rank_damping", "unwrap_optimizer"]
