"""The one interception point: record (and later edit) attention inside diffusers video transformers."""

from .records import TABLE_COLUMNS, CallRecord
from .session import Capture, capture

__all__ = ["TABLE_COLUMNS", "CallRecord", "Capture", "capture"]
