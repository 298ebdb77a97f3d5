"""The one exception family edgediff raises for problems a user can fix."""

from __future__ import annotations


class EdgediffError(Exception):
    """A problem with the user's input or files: the message names it and says how to fix it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}. {fix}" if fix else problem)


class BundleError(EdgediffError):
    """A bundle folder that is missing, malformed, or whose files do not match its manifest."""


class InputError(EdgediffError):
    """A request the pipeline cannot serve (bad size, steps, prompt, ...)."""


class ExportError(EdgediffError):
    """A checkpoint that cannot be exported, or an export whose verification failed."""


class BackendError(EdgediffError):
    """A backend that is not installed or cannot run on this machine."""


class EngineError(EdgediffError):
    """A TensorRT engine that cannot be built here (no TensorRT or GPU, or the build failed)."""
