"""srft_peft: Significance-Regularized Fine-Tuning for RGB-pretrained ViT trackers on RGB-X data.

Example:
    >>> from srft_peft import SRFTConfig, get_srft_model
    >>> SRFTConfig().apply
    'grad'
"""

from ._version import __version__
from .checkpoint import SignificanceCheckpoint, load_significance_checkpoint
from .config import SRFTConfig
from .model import SRFTModel, get_srft_model
from .significance import DiagonalSignificance, KFACSignificance, PriorSignificance

__all__ = [
    "DiagonalSignificance",
    "KFACSignificance",
    "PriorSignificance",
    "SRFTConfig",
    "SRFTModel",
    "SignificanceCheckpoint",
    "__version__",
    "get_srft_model",
    "load_significance_checkpoint",
]
