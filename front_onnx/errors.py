"""The package's error types, at the bottom of the package so every layer can raise them.

The CLI maps them to exit codes (docs/cli.md); anything else that escapes is a bug of
ours and exits 1 "internal error". Raise these, never a bare ValueError, for a problem
with the user's files or request.
"""
from __future__ import annotations

from typing import Any


class FrontError(Exception):
    """A problem with the user's input or request (one line that names the file): exit 3."""


class OnnxFileError(FrontError):
    """A model file that cannot be read or trusted: the message names the file and the problem."""


class ModelFilesError(OnnxFileError):
    """The model being validated has broken files (its ``files`` check failed): ``report``
    holds the validation report with that failing check; the message names the file."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report


class LearngeneError(FrontError):
    """A learngene file that cannot be read or trusted."""


class OutputRefused(FrontError):
    """An output path that is, or resolves to, an input file or another output of the same command."""


class UnsupportedOpsError(FrontError):
    """A graph holds ops the torch executor cannot run (FRONT+ refinement)."""


class DeviceError(FrontError):
    """The requested onnxruntime device cannot be used: exit 5."""


class ValidationFailed(FrontError):
    """An initialized model failed a hard validation check; ``report`` says which: exit 4."""

    def __init__(self, message: str, report: Any) -> None:
        super().__init__(message)
        self.report = report
