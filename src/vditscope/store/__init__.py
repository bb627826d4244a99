"""Run directories: their declared format (what each command writes), where they may go (one output
policy), atomic writes of run.json, tables (parquet) and tensors (safetensors), and reading a run back."""

from .output import OutputDir, OutputError, checked_output_file, sibling, write_atomic
from .run_dir import json_safe, library_versions, write_json, write_table, write_tensors
from .run_format import FORMATS, FileSpec, RunFormat, files_of, run_format
from .run_reader import Run, open_run
from .run_writer import RunWriter

__all__ = [
    "FORMATS",
    "FileSpec",
    "OutputDir",
    "OutputError",
    "Run",
    "RunFormat",
    "RunWriter",
    "checked_output_file",
    "files_of",
    "json_safe",
    "library_versions",
    "open_run",
    "run_format",
    "sibling",
    "write_atomic",
    "write_json",
    "write_table",
    "write_tensors",
]
