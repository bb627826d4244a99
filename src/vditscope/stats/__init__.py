"""Pure functions on (q, k, v, layout): attention output and its statistics. No model knowledge."""

from .streaming import AttentionStats, attention_stats, default_chunk_size
from .top_mass import TOP_FRACTIONS

__all__ = ["TOP_FRACTIONS", "AttentionStats", "attention_stats", "default_chunk_size"]
