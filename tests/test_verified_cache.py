"""The cache of verified files: a file unchanged since it matched is not hashed again, and any
file rewritten since (even at its old size and mtime) is hashed and refused if it differs."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgediff.bundle import verified
from edgediff.bundle.reader import Bundle
from edgediff.cli import cli
from edgediff.errors import BundleError
from edgediff.runtime.pipeline import DEFAULT_BUNDLE, Pipeline

# Short enough for fast tests, longer than any filesystem's ctime tick here.
_SETTLE_S = 0.05


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private cache folder, the cache on, and files settled after _SETTLE_S."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("EDGEDIFF_CACHE_DIR", str(folder))
    monkeypatch.delenv("EDGEDIFF_VERIFY_CACHE", raising=False)
    monkeypatch.setattr(verified, "_SETTLE_NS", int(_SETTLE_S * 1e9))
    return folder


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Every file the cache hashes, in order."""
    calls: list[Path] = []
    real = verified.sha256_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(verified, "sha256_file", counting)
    return calls


def _copy(tmp_path: Path, name: str = "bundle") -> Path:
    """A private copy of the shipped bundle, settled so that the cache may remember its files."""
    root = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / name))
    time.sleep(_SETTLE_S * 2)
    return root


def _entries(cache_dir: Path) -> dict:
    return json.loads((cache_dir / verified.CACHE_FILE).read_text())["files"]


def _rewrite_in_place(path: Path) -> os.stat_result:
    """Flip one byte of `path` in place and set its mtime back: size and mtime as before."""
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(before.st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino,
        before.st_size,
        before.st_mtime_ns,
    )
    return before


def test_an_unchanged_bundle_is_hashed_once(cache_dir, hashed, tmp_path):
    root = _copy(tmp_path)
    bundle = Bundle.open(root)
    bundle.verify()
    assert len(hashed) == len(bundle.manifest.files)
    entries = _entries(cache_dir)
    for rel, record in bundle.manifest.files.items():
        assert entries[os.path.realpath(root / rel)]["sha256"] == record.sha256

    hashed.clear()
    Bundle.open(root).verify()
    assert hashed == []


def test_a_file_rewritten_at_its_old_size_and_mtime_is_refused(cache_dir, hashed, tmp_path):
    root = _copy(tmp_path)
    Bundle.open(root).verify()
    target = root / "unet" / "model.onnx"
    before = _rewrite_in_place(target)
    assert target.stat().st_ctime_ns != before.st_ctime_ns  # what the cache relies on

    hashed.clear()
    for _ in range(2):  # refused, and refused again: a file that differs is never remembered
        with pytest.raises(BundleError, match=r"'unet/model\.onnx' does not match its sha256"):
            Bundle.open(root).verify()
    assert hashed.count(target.resolve()) == 2
    stats = [entry["stat"] for entry in _entries(cache_dir).values()]
    assert list(verified._identity(target.stat())) not in stats


def test_pipeline_load_refuses_a_file_changed_after_a_cached_load(cache_dir, tmp_path):
    root = _copy(tmp_path)
    with Pipeline.load(root) as pipeline:
        loaded = pipeline.model_files["text_encoder"][0]
    _rewrite_in_place(root / loaded)
    with pytest.raises(BundleError, match=f"'{loaded}' does not match its sha256"):
        Pipeline.load(root)


def test_a_file_that_does_not_match_is_not_remembered(cache_dir, tmp_path):
    root = _copy(tmp_path)
    _rewrite_in_place(root / "vae_decoder" / "model.onnx")
    time.sleep(_SETTLE_S * 2)
    with pytest.raises(BundleError, match=r"vae_decoder/model\.onnx' does not match"):
        Bundle.open(root).verify()
    remembered = _entries(cache_dir)  # the files checked before it were
    assert remembered
    assert os.path.realpath(root / "vae_decoder" / "model.onnx") not in remembered


def test_the_manifest_asking_another_hash_is_not_vouched_for(cache_dir, tmp_path):
    root = _copy(tmp_path)
    Bundle.open(root).verify()
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["files"]["unet/model.onnx"]["sha256"] = "0" * 64
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"'unet/model\.onnx' does not match"):
        Bundle.open(root).verify(["unet/model.onnx"])


def test_a_file_changed_just_before_it_is_hashed_is_not_remembered(
    monkeypatch, cache_dir, hashed, tmp_path
):
    # Timestamps come from a coarse clock: a rewrite in the same tick as the hash keeps ctime.
    monkeypatch.setattr(verified, "_SETTLE_NS", 3_600 * 10**9)
    root = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle"))
    for _ in range(2):
        Bundle.open(root).verify()
    assert len(hashed) == 2 * len(Bundle.open(root).manifest.files)
    assert not (cache_dir / verified.CACHE_FILE).exists()


@pytest.mark.parametrize(
    "content",
    [
        b"{ not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"format": "edgediff-verified-files", "version": 99, "files": {}}',
        b'{"format": "edgediff-verified-files", "version": 1, "files": {"/x": {"stat": [1]}}}',
    ],
    ids=["not-json", "not-utf8", "a-list", "newer-version", "bad-entry"],
)
def test_a_corrupt_cache_counts_as_empty_and_is_rewritten(cache_dir, hashed, tmp_path, content):
    root = _copy(tmp_path)
    cache_dir.mkdir()
    (cache_dir / verified.CACHE_FILE).write_bytes(content)
    Bundle.open(root).verify()
    assert len(hashed) == len(Bundle.open(root).manifest.files)
    hashed.clear()
    Bundle.open(root).verify()
    assert hashed == []


def test_a_cache_that_cannot_be_written_is_not_an_error(monkeypatch, cache_dir, hashed, tmp_path):
    root = _copy(tmp_path)
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    monkeypatch.setenv("EDGEDIFF_CACHE_DIR", str(not_a_folder / "cache"))
    for _ in range(2):
        Bundle.open(root).verify()
    assert len(hashed) == 2 * len(Bundle.open(root).manifest.files)


def test_the_cache_can_be_turned_off(monkeypatch, cache_dir, hashed, tmp_path):
    root = _copy(tmp_path)
    Bundle.open(root).verify()  # cached while on
    monkeypatch.setenv("EDGEDIFF_VERIFY_CACHE", "0")
    hashed.clear()
    Bundle.open(root).verify()
    assert len(hashed) == len(Bundle.open(root).manifest.files)
    assert not verified.cache_enabled()


def test_the_cache_stays_bounded(monkeypatch, cache_dir, tmp_path):
    first, second = _copy(tmp_path, "first"), _copy(tmp_path, "second")
    Bundle.open(first).verify()
    shutil.rmtree(first)
    Bundle.open(second).verify()
    entries = _entries(cache_dir)
    assert entries and all(key.startswith(os.path.realpath(second)) for key in entries)

    monkeypatch.setattr(verified, "MAX_ENTRIES", 5)
    third = _copy(tmp_path, "third")
    Bundle.open(third).verify()
    assert len(_entries(cache_dir)) == 5


def test_concurrent_verifications_leave_a_whole_cache(cache_dir, tmp_path):
    roots = [_copy(tmp_path, f"bundle-{i}") for i in range(4)]
    errors: list[BaseException] = []

    def verify(root: Path) -> None:
        try:
            Bundle.open(root).verify()
        except BaseException as e:  # a thread cannot fail the test itself
            errors.append(e)

    threads = [threading.Thread(target=verify, args=(root,)) for root in roots]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _entries(cache_dir)  # whole JSON; a lost update only costs a hash later
    assert [p.name for p in cache_dir.iterdir()] == [verified.CACHE_FILE]


def test_where_the_cache_is(monkeypatch, tmp_path):
    monkeypatch.delenv("EDGEDIFF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert verified.cache_path() == tmp_path / "xdg" / "edgediff" / "verified.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert verified.cache_dir() == tmp_path / "home" / ".cache" / "edgediff"


def test_the_suite_never_uses_the_users_cache():
    cache = Path(os.environ["EDGEDIFF_CACHE_DIR"]).resolve()
    assert not cache.is_relative_to((Path.home() / ".cache").resolve())


def test_cache_info_and_clear(cache_dir, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["cache", "info"])
    assert result.exit_code == 0, result.output
    assert str(cache_dir / "verified.json") in result.output and "no cache yet" in result.output

    root = _copy(tmp_path)
    Bundle.open(root).verify()
    files = len(Bundle.open(root).manifest.files)
    result = runner.invoke(cli, ["cache", "info"])
    assert result.exit_code == 0, result.output
    assert f"entries: {files} files verified" in result.output and "kB" in result.output

    result = runner.invoke(cli, ["cache", "clear"])
    assert result.exit_code == 0, result.output
    assert f"removed {cache_dir / 'verified.json'} ({files} files verified" in result.output
    assert not (cache_dir / "verified.json").exists()
    result = runner.invoke(cli, ["cache", "clear"])
    assert result.exit_code == 0 and "nothing to remove" in result.output


def test_cache_info_says_when_the_cache_is_off(monkeypatch, cache_dir):
    monkeypatch.setenv("EDGEDIFF_VERIFY_CACHE", "0")
    result = CliRunner().invoke(cli, ["cache", "info"])
    assert result.exit_code == 0 and "every load hashes every file" in result.output


def test_cache_help_explains_the_guarantee():
    result = CliRunner().invoke(cli, ["cache", "--help"])
    assert result.exit_code == 0
    for fragment in ("sha256", "refused", "change time", "EDGEDIFF_VERIFY_CACHE=0"):
        assert fragment in " ".join(result.output.split())
