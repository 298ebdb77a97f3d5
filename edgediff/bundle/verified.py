"""Files whose sha256 already matched their manifest, trusted again without hashing while unchanged.

Hashing every model file on every load is most of the load time of a large bundle (4.3 GB for
Stable Diffusion 1.5 sizes). A file is trusted without hashing only if os.stat still gives the
identity it had when it last matched (device, inode, size, mtime and ctime) and the sha256 it
matched then is the one the manifest asks for now. Rewriting a file always sets its ctime,
which only root can set back, so a changed file is hashed again, and refused if it differs.

The cache is one JSON file, `verified.json` in $EDGEDIFF_CACHE_DIR (default:
$XDG_CACHE_HOME/edgediff or ~/.cache/edgediff). A missing, unreadable or corrupt cache counts
as empty and one that cannot be written is not written: the cache only ever saves hashing.
EDGEDIFF_VERIFY_CACHE=0 turns it off. The cache is as trustworthy as its folder: whoever can
write verified.json can make a changed file trusted, so it belongs in a folder only its user
writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgediff.bundle.files import atomic_write_text, sha256_file
from edgediff.errors import EdgediffError

CACHE_FILE = "verified.json"
# Enough for every file of many bundles; past it the oldest entries go, costing one hash each.
MAX_ENTRIES = 4096
_FORMAT = "edgediff-verified-files"
_VERSION = 1
# Filesystems stamp ctime from a coarse clock (a kernel tick; a whole second on some), so a
# file rewritten within the same tick as it was hashed keeps its ctime. A file changed less
# than this long before it is hashed is therefore hashed but not remembered.
_SETTLE_NS = 2_000_000_000
_OFF = {"0", "false", "no", "off"}

# (st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns)
Identity = tuple[int, int, int, int, int]


def cache_dir() -> Path:
    """The folder edgediff caches in: $EDGEDIFF_CACHE_DIR, else $XDG_CACHE_HOME/edgediff, else
    ~/.cache/edgediff."""
    if explicit := os.environ.get("EDGEDIFF_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says a relative path there is invalid and to be ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "edgediff"


def cache_path() -> Path:
    """Where the cache of verified files is (whether or not it exists)."""
    return cache_dir() / CACHE_FILE


def cache_enabled() -> bool:
    """Whether loads may trust the cache (EDGEDIFF_VERIFY_CACHE=0 turns it off)."""
    # On Windows st_ctime is the creation time, which a rewrite leaves unchanged.
    off = os.environ.get("EDGEDIFF_VERIFY_CACHE", "").strip().lower() in _OFF
    return not off and os.name != "nt"


def _identity(st: os.stat_result) -> Identity:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _is_sha256(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _entry(value: object) -> tuple[Identity, str] | None:
    """A cache entry decoded from JSON, or None if it is malformed."""
    if not isinstance(value, dict):
        return None
    stat, sha = value.get("stat"), value.get("sha256")
    if not isinstance(stat, list) or len(stat) != 5 or not _is_sha256(sha):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in stat):
        return None
    return tuple(stat), sha  # type: ignore[return-value]


def _read(path: Path) -> dict[str, tuple[Identity, str]] | None:
    """The entries of the cache file at `path`: {} if it is missing, None if it is unusable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None
    files = data.get("files")
    if data.get("version") != _VERSION or not isinstance(files, dict):
        return None
    entries = ((key, _entry(value)) for key, value in files.items())
    return {key: entry for key, entry in entries if entry is not None}


def _current(key: str, identity: Identity) -> bool:
    """Whether the file an entry names still has the identity it recorded."""
    try:
        return _identity(os.stat(key)) == identity
    except OSError:
        return False


class VerifiedFiles:
    """The cache as one verify() sees it: what it vouches for, and the matches to remember."""

    def __init__(self, path: Path | None, entries: dict[str, tuple[Identity, str]]):
        self.path = path  # None: the cache is off
        self.entries = entries
        self.recorded: dict[str, tuple[Identity, str]] = {}

    @classmethod
    def load(cls) -> VerifiedFiles:
        """The cache as it is on disk now (empty if it is off, missing or unusable)."""
        if not cache_enabled():
            return cls(None, {})
        try:
            path = cache_path()
        except RuntimeError:  # no home folder to cache in: hash, as without the cache
            return cls(None, {})
        return cls(path, _read(path) or {})

    def matches(self, file: Path, sha256: str) -> bool:
        """Whether `file` holds the content of `sha256`: vouched for by the cache, or hashed now
        (and then remembered if it matched)."""
        if self.path is None:
            return sha256_file(file) == sha256
        key = os.path.realpath(file)
        before = os.stat(key)
        if self.entries.get(key) == (_identity(before), sha256):
            return True
        started = time.time_ns()
        found = sha256_file(key)
        if found != sha256:
            return False
        # The identity from before hashing: a change made while it was read sets a newer ctime.
        if started - before.st_ctime_ns >= _SETTLE_NS:
            self.recorded[key] = (_identity(before), found)
        return True

    def save(self) -> None:
        """Add the matches found to the cache file, all-or-nothing; never raises for a cache
        that cannot be written."""
        if self.path is None or not self.recorded:
            return
        # Read again: another process may have added entries since load().
        entries = _read(self.path) or {}
        for key, entry in self.recorded.items():
            entries.pop(key, None)  # the newest last, so the bound drops the oldest first
            entries[key] = entry
        kept = [(key, entry) for key, entry in entries.items() if _current(key, entry[0])]
        files = {
            key: {"stat": list(stat), "sha256": sha} for key, (stat, sha) in kept[-MAX_ENTRIES:]
        }
        text = json.dumps({"format": _FORMAT, "version": _VERSION, "files": files})
        with contextlib.suppress(OSError):  # read-only or full: the next load hashes again
            atomic_write_text(self.path, text)


@contextlib.contextmanager
def verified_files() -> Iterator[VerifiedFiles]:
    """The cache for one verification; the matches found are saved on exit, even when a later
    file was refused."""
    cache = VerifiedFiles.load()
    try:
        yield cache
    finally:
        cache.save()


@dataclass(frozen=True)
class CacheInfo:
    """What `edgediff cache info` reports."""

    path: Path
    enabled: bool
    exists: bool
    entries: int
    bytes: int
    usable: bool


def cache_info() -> CacheInfo:
    """Where the cache is, whether loads use it, and how many files it vouches for."""
    path = cache_path()
    try:
        size, exists = path.stat().st_size, True
    except OSError:
        size, exists = 0, False
    entries = _read(path) if exists else {}
    return CacheInfo(
        path=path,
        enabled=cache_enabled(),
        exists=exists,
        entries=len(entries or {}),
        bytes=size,
        usable=entries is not None,
    )


def clear_cache() -> CacheInfo:
    """Delete the cache file (and temporary files an interrupted write left); return what it
    held."""
    info = cache_info()
    leftovers = list(info.path.parent.glob(f".tmp-{CACHE_FILE}-*"))
    for path in (info.path, *leftovers):
        try:
            path.unlink(missing_ok=True)
        except OSError as e:
            raise EdgediffError(
                f"cannot remove '{path}' ({e.strerror})",
                "Check that folder's permissions, or delete the file by hand",
            ) from None
    return info
