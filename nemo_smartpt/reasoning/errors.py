"""The user-facing errors of :mod:`nemo_smartpt.reasoning`: one base class, so the CLI can print them as one line."""

from __future__ import annotations


class ReasoningDataError(ValueError):
    """Base class of every error a user can fix (a setting, an input file, a record)."""


class MalformedRecordError(ReasoningDataError):
    """A record that does not fit its declared layout.

    Attributes:
        reason: a short code for the stats file (``invalid_json``, ``missing_field``, ...).
        message: what is wrong, without the location.
        path: the input file, when known.
        line: the 1-based line (jsonl) or row (parquet), when known.
    """

    def __init__(self, reason: str, message: str, path: str | None = None, line: int | None = None) -> None:
        self.reason = reason
        self.message = message
        self.path = path
        self.line = line
        where = f"{path}:{line}: " if path is not None else ""
        super().__init__(f"{where}{message} [{reason}]")

    def __reduce__(self):
        # Keeps the fields when the error crosses a process boundary.
        return (type(self), (self.reason, self.message, self.path, self.line))
