"""Changing a bundle: the one transaction every writing stage uses (export, calibrate, quantize,
build).

    with edit(root, "edgediff calibrate") as tx:
        np.save(tx.path("calibration/unet/sample.npy"), ...)   # staged, not yet in the bundle
        tx.set_calibration(record)
    # committed here: staged files hashed once, moved into place, manifest.json written last

A lock file makes a second stage that edits the same bundle fail at once with a clear message
instead of interleaving its writes. An exception inside the block drops every staged file and
leaves the bundle exactly as it was.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from edgediff.bundle.files import atomic_write_bytes, atomic_write_text, sha256_file
from edgediff.bundle.reader import Bundle, check_inside
from edgediff.bundle.schema import (
    MANIFEST,
    Calibration,
    Component,
    EngineEntry,
    FileRecord,
    Manifest,
    ModelEntry,
)
from edgediff.errors import BundleError

LOCK = ".edgediff.lock"
_STAGING_PREFIX = ".edgediff-edit-"


class BundleLock:
    """An exclusive, non-blocking lock on a bundle folder, released by the OS if the process dies.

    The lock file names its holder, so the process refused can say who is editing.
    """

    def __init__(self, root: Path, action: str):
        self.root = root
        self.path = root / LOCK
        self._fd: int | None = None
        self._acquire(action)

    def _acquire(self, action: str) -> None:
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise BundleError(
                    f"cannot write to the bundle folder '{self.root}' ({e.strerror})",
                    "Copy the bundle to a folder you can write to, and run this on the copy",
                ) from None
            if not _try_lock(fd):
                holder = _read_holder(fd)
                os.close(fd)
                raise BundleError(
                    f"'{self.root}' is being changed by another edgediff process ({holder})",
                    "Wait for it to finish, then run this again (nothing was changed)",
                )
            # A releasing holder unlinks the file after we opened it: our lock is then on a
            # file nobody else will find, so start over on the current one.
            if _is_file_of(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}: {action}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Give the bundle back; idempotent."""
        if self._fd is None:
            return
        # Unlink only our own file: a new bundle moved in meanwhile may hold another's lock.
        # (Windows cannot unlink an open file; the next holder reuses it there.)
        if os.name != "nt" and _is_file_of(self._fd, self.path):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


def _is_file_of(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _try_lock(fd: int) -> bool:
    try:
        if os.name == "nt":
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except (OSError, AttributeError):  # no pread on Windows
        text = ""
    return text or "holder unknown"


class BundleEdit:
    """Changes to one bundle, staged beside it until commit()."""

    def __init__(self, root: Path, staging: Path, manifest: Manifest | None):
        self.root = root
        self.staging = staging
        self.manifest = manifest  # None while a new bundle has not been described yet
        self._creating = manifest is None
        self._dropped: set[str] = set()

    @property
    def bundle(self) -> Bundle:
        """The bundle as this transaction has it so far (files not yet staged read from root)."""
        if self.manifest is None:
            raise BundleError("the new bundle has no manifest yet", "Call set_manifest first")
        return Bundle(self.root, self.manifest)

    def path(self, rel: str) -> Path:
        """Where to write the bundle file `rel` now; it enters the bundle on commit."""
        check_inside(self.root, rel)
        path = self.staging / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def read_path(self, rel: str) -> Path:
        """Where `rel` reads from now: its staged version if this edit wrote one."""
        staged = self.staging / rel
        return staged if staged.is_file() else self.root / rel

    def is_staged(self, rel: str) -> bool:
        """Whether this edit wrote `rel` (and has not committed it yet)."""
        return (self.staging / rel).is_file()

    def write_file(self, rel: str, data: bytes | str) -> None:
        """Stage a whole file."""
        path = self.path(rel)
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)

    def set_manifest(self, manifest: Manifest) -> None:
        """Describe the bundle wholesale (a new export); the file table is filled on commit."""
        self.manifest = manifest

    def put_model(self, component: str, entry: ModelEntry) -> None:
        """Add `entry` to `component`'s models, replacing one of the same precision."""
        manifest = self.bundle.manifest
        comp = manifest.components.get(component, Component(default=entry.precision, models={}))
        models = {**comp.models, entry.precision: entry}
        components = {**manifest.components, component: replace(comp, models=models)}
        self.manifest = replace(manifest, components=components)

    def put_engine(self, entry: EngineEntry) -> None:
        """Record `entry` in place of any engine in the same file (component, precision,
        flavour)."""
        manifest = self.bundle.manifest
        others = tuple(e for e in manifest.engines if e.file != entry.file)
        self.manifest = replace(manifest, engines=(*others, entry))

    def set_calibration(self, record: Calibration | None) -> None:
        """Replace (None: drop) the bundle's calibration record; its files stay on disk."""
        self.manifest = replace(self.bundle.manifest, calibration=record)

    def drop_file(self, rel: str) -> None:
        """Take the bundle file `rel` out of the bundle on commit (nothing may still name it)."""
        check_inside(self.root, rel)
        self._dropped.add(rel)

    def commit(self) -> None:
        """Hash the staged files, move them into the bundle, then write manifest.json.

        May be called more than once (a build keeps each finished engine); a new bundle is
        committed once, by moving its whole folder into place.
        """
        manifest = self.bundle.manifest
        staged = sorted(
            p.relative_to(self.staging).as_posix()
            for p in self.staging.rglob("*")
            if p.is_file() and p.name != MANIFEST
        )
        for rel in staged:
            # Some writers (ONNX Runtime's quantiser for external weights) make files 0600;
            # bundles are meant to be shared, like the folders (0755) they sit in.
            os.chmod(self.staging / rel, 0o644)
        records = {rel: _record(self.staging / rel) for rel in staged}
        kept = {rel: r for rel, r in manifest.files.items() if rel not in self._dropped}
        manifest = replace(manifest, files={**kept, **records})
        for rel in manifest.referenced_paths():
            check_inside(self.root, rel)
            if rel in self._dropped and rel not in records:
                raise BundleError(
                    f"the bundle still names {rel}, which this edit drops",
                    "This is a bug in edgediff: please report it with the command that ran",
                )
        if self._creating:
            atomic_write_text(self.staging / MANIFEST, manifest.to_json())
        else:
            # External weight files move before the graphs that name them, so a crash between
            # two renames never leaves a model whose weights are missing.
            for rel in sorted(staged, key=lambda r: r.endswith(".onnx")):
                target = self.root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.staging / rel, target)
            atomic_write_bytes(self.root / MANIFEST, manifest.to_json().encode("utf-8"))
            # After the manifest: a crash before this leaves unlisted files, never a listed
            # file that is missing.
            for rel in self._dropped - set(records):
                (self.root / rel).unlink(missing_ok=True)
        self._dropped.clear()
        self.manifest = manifest


def _record(path: Path) -> FileRecord:
    return FileRecord(sha256=sha256_file(path), bytes=path.stat().st_size)


@contextlib.contextmanager
def edit(root: str | os.PathLike, action: str) -> Iterator[BundleEdit]:
    """Lock the bundle at `root`, yield a transaction on it, commit when the block succeeds.

    `action` names the stage in the lock file ("edgediff calibrate"), for whoever is refused.
    """
    root = Path(root)
    Bundle.open(root)  # a missing or broken bundle fails before any lock file is made
    lock = BundleLock(root, action)
    try:
        # Staging folders left by a killed stage are ours to clear now that we hold the lock.
        for stale in root.glob(f"{_STAGING_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
        try:
            # Read under the lock: the manifest another stage committed a moment ago counts.
            tx = BundleEdit(root, staging, Bundle.open(root).manifest)
            yield tx
            tx.commit()
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        lock.release()


_FORCE_FIX = "Choose another folder, or pass --force to replace it"


def check_destination(root: Path, force: bool) -> None:
    """Refuse a destination for a new bundle that holds anything but (with force) a bundle."""
    if root.exists() and not root.is_dir():
        raise BundleError(f"bundle destination '{root}' is a file", "Choose a folder path")
    if not root.is_dir() or not any(root.iterdir()):
        return
    if not force:
        raise BundleError(f"bundle folder '{root}' already exists and is not empty", _FORCE_FIX)
    if not (root / MANIFEST).is_file():
        # --force replaces an earlier bundle; it must never wipe an unrelated folder.
        raise BundleError(
            f"'{root}' is not empty and has no {MANIFEST}, so it is not a bundle that --force "
            "may replace",
            "Choose another folder, or empty this one yourself",
        )


@contextlib.contextmanager
def create(root: str | os.PathLike, action: str, force: bool = False) -> Iterator[BundleEdit]:
    """Yield a transaction that writes a new bundle into a hidden sibling folder; on success it
    becomes `root` (replacing an earlier bundle there only with `force`), otherwise it vanishes.

    An earlier bundle being replaced is locked for the whole time, so no other stage edits it
    meanwhile.
    """
    root = Path(root)
    check_destination(root, force)
    lock = BundleLock(root, action) if (root / MANIFEST).is_file() else None
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
        try:
            tx = BundleEdit(root, staging, None)
            yield tx
            tx.commit()
            os.chmod(staging, 0o755)  # mkdtemp makes 0700; bundles are meant to be shared
            _move_into_place(staging, root, force)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if lock is not None:
            lock.release()


def _move_into_place(tmp: Path, root: Path, force: bool) -> None:
    """Rename the finished folder to `root`, replacing an old bundle only now."""
    check_destination(root, force)  # again: the folder may have changed meanwhile
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()
    if not root.exists():
        os.rename(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    os.rename(root, old / root.name)
    try:
        os.rename(tmp, root)
    except BaseException:
        # Put the old bundle back; if even that fails it stays recoverable in `old`.
        os.rename(old / root.name, root)
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)
