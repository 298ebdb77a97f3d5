"""Keep the exporters' chatter out of the user's terminal unless something fails."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import warnings
from collections.abc import Iterator

# Library loggers whose records (e.g. torch.onnx's "torchvision is not installed") are noise.
_NOISY_LOGGERS = ("torch", "onnxscript", "onnx_ir", "diffusers", "transformers", "onnxruntime")


def _noisy_loggers() -> list[logging.Logger]:
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in _NOISY_LOGGERS]
    return [logging.getLogger(n) for n in sorted(set(names) | set(_NOISY_LOGGERS))]


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Capture stdout, stderr, warnings and library logging; replay them to stderr on an error."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    saved = []
    for logger in _noisy_loggers():
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    real_stderr = sys.stderr
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(buffer),
        ):
            warnings.simplefilter("always")
            try:
                yield buffer
            finally:
                for w in caught:
                    buffer.write(
                        warnings.formatwarning(w.message, w.category, w.filename, w.lineno)
                    )
    except Exception:
        # The caller turns the exception into a one-line ExportError; the details go here.
        text = buffer.getvalue().strip()
        if text:
            real_stderr.write(text + "\n")
            real_stderr.flush()
        raise
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


def first_line(error: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, short enough for a one-line error."""
    text = str(error).strip().splitlines()
    line = f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
