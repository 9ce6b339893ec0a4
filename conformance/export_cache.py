"""Exports kept under a content hash (ONNX, LiteRT): a re-run whose inputs are unchanged reuses the file.

One rule for every exporter: the key hashes the bytes of each file the export depends on (the generated
code, the weights, the exporter's own module, so that a fix to an exporter invalidates what it wrote
before) and the settings (JSON); the key is kept beside the export as `NAME.sha256`, written after the
export itself, both atomically, so that a key never names a file that was not completely written.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

from spec.files import atomic_write


def content_key(files: Iterable[Path], settings) -> str:
    """SHA-256 over the SHA-256 of each file's content (`content`), then of `settings` as JSON."""
    digest = hashlib.sha256()
    for part in (*(content(Path(f)) for f in files), json.dumps(settings).encode()):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()


def content(path: Path) -> bytes:
    """A file's bytes; a .safetensors file's with its JSON header's keys sorted. The safetensors writer
    orders the header's metadata by a hash map seeded per process, so the same tensors and metadata
    were written as different bytes by every run, and no export was ever reused across runs."""
    data = path.read_bytes()
    if path.suffix != ".safetensors" or len(data) < 8:
        return data
    size = int.from_bytes(data[:8], "little")
    try:
        header = json.loads(data[8:8 + size])
    except ValueError:  # not a safetensors header: the bytes as they are
        return data
    return json.dumps(header, sort_keys=True).encode() + data[8 + size:]


def cached_export(path: Path, key: str, export: Callable[[], float]) -> tuple[bool, float]:
    """Reuse `path` if its key file holds `key`, else call `export()` (which writes `path` atomically and
    returns its seconds) and record the key. Returns (cached, export seconds; 0 when cached)."""
    path = Path(path)
    key_file = path.with_name(path.name + ".sha256")
    if path.exists() and key_file.exists() and key_file.read_text() == key:
        return True, 0.0
    key_file.unlink(missing_ok=True)  # a failed export leaves no key naming an older file
    seconds = export()
    atomic_write(key_file, key)
    return False, seconds
