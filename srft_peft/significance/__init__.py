"""Prior significance: what it is (`prior`) and how it is measured on pretraining-domain data (`estimation`)."""

from .estimation import estimate_prior_significance
from .prior import DiagonalSignificance, KFACSignificance, PriorSignificance

__all__ = ["DiagonalSignificance", "KFACSignificance", "PriorSignificance", "estimate_prior_significance"]
