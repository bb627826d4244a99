"""Errors that the command line reports as one clear line (no traceback)."""


class VditscopeError(Exception):
    """A user-facing error: bad input, a missing model, an unsupported setting."""
