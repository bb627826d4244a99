"""The one interception point: record (and edit) attention inside diffusers video transformers.

Every technique is a frozen config with a ``Selection`` (where), an observer with one method
``observe(call) -> Tensor`` and a ``Technique`` that applies them; ``HookSession`` does the rest.
"""

from .calls import ObservedCall, SdpaCall
from .recorder import Capture, CaptureConfig, apply_capture, capture
from .records import TABLE_COLUMNS, CallRecord
from .selection import Selection
from .session import HookSession, SessionObserver, Technique, observing

__all__ = [
    "TABLE_COLUMNS",
    "CallRecord",
    "Capture",
    "CaptureConfig",
    "HookSession",
    "ObservedCall",
    "SdpaCall",
    "Selection",
    "SessionObserver",
    "Technique",
    "apply_capture",
    "capture",
    "observing",
]
