"""Render generated/ from the spec: `make generate` and `make check-generated`.

One Jinja template set per framework (generators/templates/<framework>/), one output file per family
and framework. The spec is validated and every width resolved (spec/resolve.py) before anything is
rendered; files are formatted with ruff and written through a temporary file and a rename, so a
failure leaves generated/ as it was. Output is deterministic: no dates, no paths from this machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from generators.context import REPO, block_row, family_context, spec_file
from generators.frameworks import FRAMEWORKS
from spec import SpecError, load_spec
from spec.files import atomic_write
from spec.loader import DEFAULT_SPEC, LoadedSpec
from spec.schema import schema_text

TEMPLATES = Path(__file__).resolve().parent / "templates"
DEFAULT_OUT = REPO / "generated"
RUFF_OPTIONS = ["--isolated", "--line-length", "110", "--target-version", "py310"]


def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["py"] = _literal
    env.filters["text"] = escaped
    env.filters["block_row"] = block_row
    return env


class RenderError(RuntimeError):
    """A spec that validated could not be rendered (a generator bug), said in one line."""


def escaped(text: str) -> str:
    """Free text from the spec made safe inside a double-quoted string, a docstring and a comment:
    backslashes and double quotes escaped, every character that is not printable (line breaks, control
    and format characters) written as its escape. Read back as a string literal, it is the text again."""
    return "".join("\\" + c if c in '\\"' else c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _literal(value) -> str:
    """Python literal of a spec value, deterministic, strings in double quotes like ruff's style."""
    if isinstance(value, str):
        return f'"{escaped(value)}"'
    if isinstance(value, (list, tuple)):
        items = ", ".join(_literal(v) for v in value)
        return f"[{items}]" if isinstance(value, list) else f"({items}{',' if len(value) == 1 else ''})"
    return repr(value)


def render_all(loaded: LoadedSpec) -> dict[str, str]:
    """Relative path under generated/ -> file text, for the whole spec. RenderError if a template or ruff
    fails on a spec that validated."""
    import jinja2

    env = _environment()
    files: dict[str, str] = {}

    def render(path: str, template: str, **values) -> None:
        try:
            files[path] = env.get_template(template).render(**values)
        except jinja2.TemplateError as exc:
            raise RenderError(f"{template} failed on {path} (a generator bug): {type(exc).__name__}: {exc}") from None

    header = {"spec_file": spec_file(loaded.path), "spec_sha256": loaded.sha256}
    render("__init__.py", "package_init.py.j2", framework=None, packages=[f.package for f in FRAMEWORKS.values()],
           **header)
    families = list(loaded.spec.families)
    for framework in FRAMEWORKS.values():
        for family in families:
            render(f"{framework.package}/{family}.py", f"{framework.key}/model.py.j2",
                   **family_context(loaded, family, framework.key))
        render(f"{framework.package}/__init__.py", "package_init.py.j2", framework=framework.title,
               families=families, **header)
    return {path: _format(text, path) for path, text in sorted(files.items())}


def _format(text: str, path: str) -> str:
    try:
        result = subprocess.run(
            [_ruff(), "format", *RUFF_OPTIONS, "--stdin-filename", path, "-"],
            input=text, capture_output=True, text=True, check=False,
        )
    except OSError as exc:
        raise RenderError(f"cannot run ruff to format {path}: {exc}") from None
    if result.returncode != 0:
        problem = next((line for line in result.stderr.splitlines() if line.strip()), "no message")
        raise RenderError(f"ruff could not format {path} (a generator bug): {problem.removeprefix('error: ')}")
    return result.stdout


def _ruff() -> str:
    candidate = Path(sys.executable).with_name("ruff")
    return str(candidate) if candidate.exists() else "ruff"


def schema_path(spec_path: Path) -> Path:
    """The JSON Schema lives beside the spec: spec/mobilenets.yaml -> spec/mobilenets.schema.json."""
    return spec_path.with_name(f"{spec_path.name.split('.')[0]}.schema.json")


def stale_files(rendered: dict[str, str], out: Path) -> list[str]:
    """Files under `out` that differ from, are missing from, or are not part of the rendering."""
    stale = [path for path, text in rendered.items() if _read(out / path) != text]
    existing = {p.relative_to(out).as_posix() for p in out.rglob("*.py")} if out.exists() else set()
    stale += sorted(existing - set(rendered))
    return sorted(stale)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write(rendered: dict[str, str], out: Path) -> list[str]:
    """Write what changed and delete files under `out` that are no longer generated."""
    changed = stale_files(rendered, out)
    for path in changed:
        if path in rendered:
            atomic_write(out / path, rendered[path])
        else:
            (out / path).unlink()
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mnforge generate", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="spec file (default: spec/mobilenets.yaml)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: generated/)")
    parser.add_argument("--check", action="store_true", help="write nothing; fail if the output folder is stale")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        loaded = load_spec(args.spec)
        rendered = render_all(loaded)
    except (SpecError, RenderError) as exc:
        print(f"error: {exc}; nothing was written.", file=sys.stderr)
        return 2
    schema, schema_file = schema_text(), schema_path(args.spec)
    if args.check:
        stale = stale_files(rendered, args.out)
        if _read(schema_file) != schema:
            stale.append(str(schema_file))
        if stale:
            print(f"{args.out} is stale; run `make generate`. Stale files:", file=sys.stderr)
            for path in stale:
                print(f"  {args.out / path}", file=sys.stderr)
            return 1
        print(f"{args.out}: {len(rendered)} files up to date ({time.perf_counter() - start:.2f} s)")
        return 0
    changed = write(rendered, args.out)
    if _read(schema_file) != schema:
        atomic_write(schema_file, schema)
        changed.append(schema_file.name)
    print(f"{args.out}: {len(rendered)} files, {len(changed)} changed ({time.perf_counter() - start:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
