"""spec/files.py, the one atomic write: a new file gets the umask's mode, an existing file keeps its mode,
and a failure leaves the old content and no temporary file."""

from __future__ import annotations

import os
import stat

import pytest

from spec.files import atomic_path, atomic_write


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_file_gets_the_umask_mode(tmp_path, umask_022):
    atomic_write(tmp_path / "sub" / "new.txt", "text")
    assert (tmp_path / "sub" / "new.txt").read_text() == "text"
    assert _mode(tmp_path / "sub" / "new.txt") == 0o644


def test_a_new_file_under_another_umask(tmp_path):
    previous = os.umask(0o077)
    try:
        atomic_write(tmp_path / "private.bin", b"\x00\x01")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "private.bin") == 0o600


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_an_existing_file_keeps_its_mode(tmp_path, umask_022, mode):
    target = tmp_path / "kept.txt"
    target.write_text("old")
    os.chmod(target, mode)
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert _mode(target) == mode


def test_a_library_writing_the_temporary_path_gets_the_same_modes(tmp_path, umask_022):
    with atomic_path(tmp_path / "w.weights.h5", suffix=".tmp.weights.h5") as tmp:
        assert tmp.name.endswith(".tmp.weights.h5") and tmp.parent == tmp_path
        tmp.write_bytes(b"h5")
    assert _mode(tmp_path / "w.weights.h5") == 0o644


def test_a_failure_leaves_the_old_content_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"previous")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"], "no temporary file left behind"


def test_a_failing_writer_leaves_no_temporary_file(tmp_path):
    with pytest.raises(RuntimeError, match="exporter failed"), atomic_path(tmp_path / "model.onnx") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("exporter failed")
    assert list(tmp_path.iterdir()) == []


def test_an_npz_written_array_by_array_reads_back_exactly_and_fails_whole(tmp_path, umask_022):
    import numpy as np

    from spec.files import atomic_npz

    arrays = {"blocks/stem": np.arange(12, dtype=np.float64).reshape(3, 4), "loss": np.float64(2.5),
              "labels": np.array([3, 1], np.int64)}
    with atomic_npz(tmp_path / "ref.npz") as add:
        for name, value in arrays.items():
            add(name, value)
    with np.load(tmp_path / "ref.npz") as data:  # numpy's own reader, names in the order written
        assert data.files == list(arrays)
        for name, value in arrays.items():
            assert data[name].dtype == value.dtype and np.array_equal(data[name], value)
    assert _mode(tmp_path / "ref.npz") == 0o644
    with pytest.raises(RuntimeError), atomic_npz(tmp_path / "ref.npz") as add:
        add("other", np.zeros(2))
        raise RuntimeError("the writer failed half-way")
    with np.load(tmp_path / "ref.npz") as data:  # the earlier file, whole
        assert data.files == list(arrays)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref.npz"]
