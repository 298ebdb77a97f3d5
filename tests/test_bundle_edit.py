"""The bundle transaction: staged writes, manifest last, one editor at a time across processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgediff.bundle.edit import LOCK, create, edit
from edgediff.bundle.reader import Bundle
from edgediff.bundle.schema import MANIFEST
from edgediff.errors import BundleError
from edgediff.runtime.pipeline import DEFAULT_BUNDLE

# A second process that opens an edit on the bundle, stages a file, says so, then waits for a
# line on stdin: "commit" ends the block normally, anything else raises inside it.
_HOLDER = textwrap.dedent(
    """
    import sys
    from edgediff.bundle.edit import edit

    with edit(sys.argv[1], "edgediff calibrate") as tx:
        tx.write_file("notes/holder.txt", "written by the holder\\n")
        print("editing", flush=True)
        if sys.stdin.readline().strip() != "commit":
            raise SystemExit("dropped")
    print("committed", flush=True)
    """
)


@pytest.fixture
def bundle(tmp_path) -> Path:
    """A private copy of the shipped bundle."""
    root = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, root)
    return root


def _start_holder(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "editing", proc.stderr.read()
    return proc


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgediff.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def test_a_second_process_editing_the_same_bundle_is_refused(bundle):
    manifest_before = (bundle / MANIFEST).read_bytes()
    holder = _start_holder(bundle)
    try:
        result = _cli("calibrate", str(bundle), "--samples", "1", "--steps", "1", "--force")
        assert result.returncode == 1, result.stderr
        message = result.stderr.strip().splitlines()
        assert len(message) == 1, result.stderr  # one line, no traceback
        assert "is being changed by another edgediff process" in message[0]
        assert f"pid {holder.pid}: edgediff calibrate" in message[0]
        assert "nothing was changed" in message[0]
        with (
            pytest.raises(BundleError, match="being changed by another"),
            edit(bundle, "edgediff quantize"),
        ):
            pass
        assert (bundle / MANIFEST).read_bytes() == manifest_before
        holder.stdin.write("commit\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "committed"
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    opened = Bundle.open(bundle)
    opened.verify()
    assert "notes/holder.txt" in opened.manifest.files
    assert not (bundle / LOCK).exists()
    # Once the holder is done, the next stage edits as usual.
    with edit(bundle, "edgediff build") as tx:
        tx.write_file("notes/second.txt", "second\n")
    Bundle.open(bundle).verify()


def test_a_killed_editor_leaves_the_previous_bundle_and_no_lock(bundle):
    manifest_before = (bundle / MANIFEST).read_bytes()
    holder = _start_holder(bundle)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert (bundle / MANIFEST).read_bytes() == manifest_before
    assert not (bundle / "notes").exists()
    Bundle.open(bundle).verify()
    # The OS dropped the dead process's lock; its staging folder is cleared by the next editor.
    with edit(bundle, "edgediff build") as tx:
        tx.write_file("notes/after.txt", "after\n")
    assert [p.name for p in bundle.iterdir() if p.name.startswith(".")] == []
    assert "notes/after.txt" in Bundle.open(bundle).manifest.files


def test_a_failed_edit_changes_nothing(bundle):
    manifest_before = (bundle / MANIFEST).read_bytes()
    listing = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))
    with (
        pytest.raises(RuntimeError, match="stage failed"),
        edit(bundle, "edgediff quantize") as tx,
    ):
        tx.write_file("unet/model.onnx", b"not a model")
        tx.set_calibration(None)
        raise RuntimeError("stage failed")
    assert (bundle / MANIFEST).read_bytes() == manifest_before
    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == listing
    Bundle.open(bundle).verify()


def test_committed_files_are_hashed_into_the_manifest(bundle):
    with edit(bundle, "test") as tx:
        tx.write_file("unet/notes.txt", "one\n")
        assert tx.is_staged("unet/notes.txt")
        assert not (bundle / "unet/notes.txt").exists()  # staged, not yet in the bundle
        tx.commit()
        assert (bundle / "unet/notes.txt").read_text() == "one\n"
        tx.write_file("unet/notes.txt", "two\n")
    opened = Bundle.open(bundle)
    opened.verify()
    assert opened.manifest.files["unet/notes.txt"].bytes == 4


def test_committed_files_are_readable_by_everyone(bundle):
    # ONNX Runtime's quantiser writes external weights 0600; a server running as another
    # user must still read the bundle.
    with edit(bundle, "test") as tx:
        tx.write_file("unet/private.data", b"\0" * 8)
        os.chmod(tx.path("unet/private.data"), 0o600)
    assert (bundle / "unet/private.data").stat().st_mode & 0o777 == 0o644


def test_paths_leaving_the_bundle_are_refused(bundle):
    with (
        pytest.raises(BundleError, match="leaves the bundle folder"),
        edit(bundle, "test") as tx,
    ):
        tx.path("../outside.txt")
    assert not (bundle.parent / "outside.txt").exists()


def test_replacing_a_bundle_that_is_being_edited_is_refused(bundle):
    holder = _start_holder(bundle)
    try:
        with (
            pytest.raises(BundleError, match="being changed by another"),
            create(bundle, "edgediff export", force=True),
        ):
            pass
    finally:
        holder.stdin.write("drop\n")
        holder.stdin.close()
        holder.wait(timeout=60)
    Bundle.open(bundle).verify()


def test_a_read_only_bundle_is_refused_with_the_fix(bundle):
    if os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    bundle.chmod(0o555)
    try:
        with (
            pytest.raises(BundleError, match=r"cannot write to the bundle folder.*Copy the bundle"),
            edit(bundle, "test"),
        ):
            pass
    finally:
        bundle.chmod(0o755)
