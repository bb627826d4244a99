"""vditscope: see and change what attention does inside video diffusion transformers."""

from .adapters import UnsupportedModelError, supported_families
from .capture import Capture, capture
from .capture.intervene import AttentionEdit, intervene
from .layout import TokenLayout
from .models.pixel_vae import PixelShuffleVAE
from .stats import TOP_FRACTIONS, AttentionStats, attention_stats
from .tiny import tiny_model_dir

__version__ = "0.1.0"

__all__ = [
    "TOP_FRACTIONS",
    "AttentionEdit",
    "AttentionStats",
    "Capture",
    "PixelShuffleVAE",
    "TokenLayout",
    "UnsupportedModelError",
    "__version__",
    "attention_stats",
    "capture",
    "intervene",
    "supported_families",
    "tiny_model_dir",
]
