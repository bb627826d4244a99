"""vditscope: see and change what attention does inside video diffusion transformers."""

from .adapters import UnsupportedModelError, supported_families
from .capture import Capture, capture
from .capture.intervene import AttentionEdit, intervene
from .capture.sink_ablation import ablate_sinks
from .capture.sink_capture import sink_capture
from .layout import TokenLayout
from .models.pixel_vae import PixelShuffleVAE
from .stats import TOP_FRACTIONS, AttentionStats, attention_stats
from .stats.key_stats import KeyStats, key_stats
from .tiny import tiny_model_dir
from .version import __version__

__all__ = [
    "TOP_FRACTIONS",
    "AttentionEdit",
    "AttentionStats",
    "Capture",
    "KeyStats",
    "PixelShuffleVAE",
    "TokenLayout",
    "UnsupportedModelError",
    "__version__",
    "ablate_sinks",
    "attention_stats",
    "capture",
    "intervene",
    "key_stats",
    "sink_capture",
    "supported_families",
    "tiny_model_dir",
]
