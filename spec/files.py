"""Writing files so that nothing is ever half-written: a temporary file in the same folder, then a rename.

The one atomic-write helper of the suite (generated code, weights, reports, ONNX exports, port results).
It lives in spec/, the bottom layer, so that generators/ and conformance/ both import it without
importing upwards. Permissions are those of an ordinary write: a new file gets the umask's mode
(0o666 & ~umask: 0644 under umask 022), a file that exists keeps its mode. (mkstemp alone would leave
every file 0600, unreadable by other users.)
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np


@contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path beside `path` for a library to write to (Keras `save_weights`, an exporter);
    renamed over `path` when the block ends. On any failure `path` is untouched and no temporary file
    stays. `suffix`: what the writer expects the name to end with (".weights.h5")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path | str, data: bytes | str) -> None:
    """Write `data` (text as UTF-8) to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def atomic_npz(path: Path | str) -> Iterator[Callable[[str, object], None]]:
    """An .npz (uncompressed, as `numpy.savez` writes and `numpy.load` reads) written array by array:
    `with atomic_npz(path) as add: add(name, array)`. Each array goes to the file as it is added, so a
    writer can drop it at once (the training reference's parameters after every optimizer step: 2.4 GB
    each for MobileNetV5's 300M variants), and nothing is built in memory first. Renamed over `path`
    when the block ends; on any failure `path` is untouched."""
    with atomic_path(path, suffix=".npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                                   allowZip64=True) as archive:
        def add(name: str, array) -> None:
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)

        yield add


def file_mode(path: Path) -> int:
    """The permission bits a write to `path` should leave: the existing file's, else the umask's."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without changing it where Linux reports it (/proc), else set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
