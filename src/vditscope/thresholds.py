"""Thresholds that statistics, analyses, reports and the command line share (a light module, importable without
torch), each defined once."""

from __future__ import annotations

# a key is an attention sink when it receives at least this many times the median key's attention, the
# median floored at SINK_MEDIAN_FLOOR x the uniform share (1 / keys): in a concentrated head (local or
# one-key attention) the median key gets almost nothing, and ordinary keys would pass at ratios of 10^4-10^7
SINK_RATIO = 10.0
SINK_MEDIAN_FLOOR = 1.0
