"""The spec: `mobilenets.yaml`, its typed model, and everything computed from it alone."""

from spec.loader import DEFAULT_SPEC, LoadedSpec, SpecError, load_spec
from spec.resolve import Architecture, Description, UnknownName, describe, resolve_architecture

__all__ = [
    "DEFAULT_SPEC", "Architecture", "Description", "LoadedSpec", "SpecError", "UnknownName",
    "describe", "load_spec", "resolve_architecture",
]
