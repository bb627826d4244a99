"""Run directories: atomic writes of run.json, tables (parquet) and tensors (safetensors)."""

from .run_dir import atomic_run_dir, json_safe, write_atomic, write_json, write_table, write_tensors

__all__ = ["atomic_run_dir", "json_safe", "write_atomic", "write_json", "write_table", "write_tensors"]
