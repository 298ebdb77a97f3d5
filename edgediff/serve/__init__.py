"""Serving over HTTP: one app (FastAPI), on one device (uvicorn) or across many (Ray Serve).

`settings` imports without the `[serve]` extra; the app and servers need FastAPI and uvicorn,
and `ray_app` needs Ray Serve.
"""

from __future__ import annotations

from edgediff.errors import BackendError


def require(module: str, extra: str) -> None:
    """A one-line error naming the extra to install when `module` is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise BackendError(
            f"edgediff serve needs {module}, which is not installed",
            f"pip install 'edgediff[{extra}]'",
        )
