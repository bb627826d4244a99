"""Thresholds that statistics, analyses, reports and the command line share (a light module, importable without
torch), each defined once."""

from __future__ import annotations

# a key is an attention sink when it receives at least this many times the median key's attention
SINK_RATIO = 10.0
