"""File helpers shared by every stage that writes: hashes and all-or-nothing writes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, streamed so multi-GB weights never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it into place only if the block succeeds.

    An interrupted write leaves a `.tmp-*` file, never a half file under the final name.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{final.name}-", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(final: str | os.PathLike, data: bytes) -> None:
    """Write bytes to `final` all-or-nothing."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(final: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text to `final` all-or-nothing."""
    atomic_write_bytes(final, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_model_path(final: str | os.PathLike) -> Iterator[Path]:
    """Like atomic_path, for an ONNX file that may bring `<name>.data` (external weights).

    The model is written under its final name in a temporary folder beside `final`, because
    the graph refers to its data file by name; on success the data file moves first, so a
    crash never leaves a model whose weights are missing.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield staging / final.name
        data = staging / (final.name + ".data")
        if data.exists():
            os.replace(data, final.with_name(data.name))
        os.replace(staging / final.name, final)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
