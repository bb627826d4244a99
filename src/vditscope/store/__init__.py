"""Run directories: where they may go (one output policy), and atomic writes of run.json, tables
(parquet) and tensors (safetensors)."""

from .output import OutputDir, OutputError, checked_output_file, sibling, write_atomic
from .run_dir import json_safe, library_versions, write_json, write_table, write_tensors

__all__ = [
    "OutputDir",
    "OutputError",
    "checked_output_file",
    "json_safe",
    "library_versions",
    "sibling",
    "write_atomic",
    "write_json",
    "write_table",
    "write_tensors",
]
