"""Where a spec's generated code lives, and how the frameworks' workers import it.

The bundled spec's code is the committed package `generated/` (`make check-generated` keeps it fresh).
Any other spec, or the bundled file once edited, is rendered once into a content-addressed cache,
`.cache/generated/<key>/`, keyed by the spec's text and the generator's own sources, so that a user's
spec needs no edit in this repo and a changed template never reuses stale code. `--generated DIR`
(the environment variable below, which worker processes inherit) names another folder instead.

Worker processes learn the folder from MNFORGE_GENERATED; the parent sets it (conformance/runner.py,
conformance/cli.py). A folder other than the bundled package is imported under a name of its own
(`mnforge_generated_<key>.pytorch.<family>`), so that it can never be confused with `generated`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path
from types import ModuleType

from generators.frameworks import framework
from spec.loader import DEFAULT_SPEC, LoadedSpec

REPO = Path(__file__).resolve().parent.parent
BUNDLED = REPO / "generated"
ENVIRONMENT = "MNFORGE_GENERATED"
DEFAULT_CACHE = Path(".cache/generated")


@cache
def generator_version() -> str:
    """Hash of everything that shapes generated code besides the spec: generators/ and spec/ sources."""
    digest = hashlib.sha256()
    roots = (REPO / "generators", REPO / "spec")
    for path in sorted(p for root in roots for p in root.rglob("*") if p.suffix in (".py", ".j2")):
        digest.update(path.relative_to(REPO).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(loaded: LoadedSpec) -> str:
    return hashlib.sha256(f"{loaded.sha256}:{generator_version()}".encode()).hexdigest()[:20]


def is_bundled(loaded: LoadedSpec) -> bool:
    """The bundled spec, unedited since `make generate`: its code is the committed package."""
    return loaded.path.resolve() == DEFAULT_SPEC and _recorded_sha(BUNDLED) == loaded.sha256[:16]


def _recorded_sha(folder: Path) -> str | None:
    try:
        first = (folder / "__init__.py").read_text(encoding="utf-8").splitlines()[0]
    except (OSError, IndexError):
        return None
    return first.split("(sha256 ", 1)[1][:16] if "(sha256 " in first else None


def generated_dir(loaded: LoadedSpec, override: Path | None = None, cache_root: Path = DEFAULT_CACHE) -> Path:
    """The folder holding `loaded`'s generated package, rendered there first when needed."""
    if override is not None:
        _render_into(loaded, Path(override))
        return Path(override).resolve()
    if is_bundled(loaded):
        return BUNDLED
    folder = (Path(cache_root) / cache_key(loaded)).resolve()
    if not (folder / "__init__.py").exists():
        _render_cached(loaded, folder)
    return folder


def _render_into(loaded: LoadedSpec, out: Path) -> None:
    from generators.generate import render_all, write

    write(render_all(loaded), out)


def _render_cached(loaded: LoadedSpec, folder: Path) -> None:
    """Render into a temporary sibling and rename it into place: a reader sees all of it or none, and
    two processes racing to fill the same key both end with the same folder."""
    from generators.generate import render_all, write

    rendered = render_all(loaded)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(rendered, tmp)
        os.replace(tmp, folder)
    except OSError:
        if not (folder / "__init__.py").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def active_dir() -> Path:
    """The generated folder this process imports from: MNFORGE_GENERATED, else the bundled package."""
    value = os.environ.get(ENVIRONMENT)
    return Path(value).resolve() if value else BUNDLED


def family_module(framework_key: str, family: str) -> ModuleType:
    """The generated module of one family for one framework (generators.frameworks), from active_dir()."""
    package = framework(framework_key).package
    folder = active_dir()
    if folder == BUNDLED:
        return importlib.import_module(f"generated.{package}.{family}")
    name = f"mnforge_generated_{hashlib.sha256(str(folder).encode()).hexdigest()[:12]}.{package}.{family}"
    if name in sys.modules:
        return sys.modules[name]
    path = folder / package / f"{family}.py"
    if not path.is_file():
        raise ValueError(f"{path}: no generated {framework_key} code for family {family!r} "
                         f"(is {folder} rendered from this spec?)")
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # before running it: dataclasses and typing look their module up by name
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
