"""The reference models we port, and which spec variant and flavor reproduce each.

No framework is imported here: the builders live in torch_refs.py (torchvision, timm) and
keras_refs.py (keras.applications), each run in its own process.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Library:
    """A library of reference models; its name is also a weight format of `mnforge port`."""

    name: str
    framework: str  # the framework it runs in (generators.frameworks.FRAMEWORKS): the port worker's
    flavor: str  # the flavor its checkpoints imply when neither --flavor nor the file says
    suffix: str  # its checkpoints' file suffix


LIBRARIES = {lib.name: lib for lib in (
    Library("torchvision", "torch", "torchvision", ".pth"),
    Library("timm", "torch", "timm", ".pth"),
    Library("keras-applications", "keras", "keras", ".weights.h5"),
)}


@dataclass(frozen=True)
class Reference:
    name: str  # e.g. "torchvision:mobilenet_v3_large", "timm:tf_mobilenetv3_small_075"
    library: str  # a key of LIBRARIES
    variant: str  # the spec's variant
    flavor: str  # the flavor that makes the generated model the same function
    builder: str  # the library's constructor
    kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def framework(self) -> str:
        return LIBRARIES[self.library].framework


def _refs() -> dict[str, Reference]:
    refs: list[Reference] = [
        Reference("torchvision:mobilenet_v2", "torchvision", "mobilenet_v2_100", "torchvision", "mobilenet_v2"),
        Reference("torchvision:mobilenet_v3_large", "torchvision", "mobilenet_v3_large_100", "torchvision",
                  "mobilenet_v3_large"),
        Reference("torchvision:mobilenet_v3_small", "torchvision", "mobilenet_v3_small_100", "torchvision",
                  "mobilenet_v3_small"),
        Reference("timm:mobilenetv1_100", "timm", "mobilenet_v1_100", "timm", "mobilenetv1_100"),
    ]
    refs += [Reference(f"timm:mobilenetv2_{w}", "timm", f"mobilenet_v2_{w}", "timm", f"mobilenetv2_{w}")
             for w in ("035", "050", "075", "100", "140")]
    refs += [Reference(f"timm:mobilenetv3_{size}_{w}", "timm", f"mobilenet_v3_{size}_{w}", "timm",
                       f"mobilenetv3_{size}_{w}")
             for size, widths in (("large", ("075", "100")), ("small", ("050", "075", "100"))) for w in widths]
    refs += [Reference(f"timm:tf_mobilenetv3_{size}_{w}", "timm", f"mobilenet_v3_{size}_{w}", "timm_tf",
                       f"tf_mobilenetv3_{size}_{w}")
             for size in ("large", "small") for w in ("075", "100", "minimal_100")]
    refs += [Reference(f"timm:mobilenetv4_{name}", "timm", f"mobilenet_v4_{name}", "timm", f"mobilenetv4_{name}")
             for name in ("conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large")]
    # MobileNetV5: timm's encoder pads as TF SAME (pad_type 'same'), its classifiers symmetrically
    refs += [Reference("timm:mobilenetv5_300m_enc", "timm", "mobilenet_v5_300m_encoder", "timm_tf", "mobilenetv5_300m_enc"),
             # timm's default config for mobilenetv5_300m is its Gemma 3n tag, which has no classifier
             Reference("timm:mobilenetv5_300m", "timm", "mobilenet_v5_300m", "timm", "mobilenetv5_300m",
                       (("num_classes", 1000),)),
             Reference("timm:mobilenetv5_base", "timm", "mobilenet_v5_base", "timm", "mobilenetv5_base")]
    alphas = {"100": 1.0, "075": 0.75, "050": 0.5, "025": 0.25, "035": 0.35, "130": 1.3, "140": 1.4}
    refs += [Reference(f"keras-applications:MobileNet_{w}", "keras-applications", f"mobilenet_v1_{w}", "keras",
                       "MobileNet", (("alpha", alphas[w]),)) for w in ("100", "075", "050", "025")]
    refs += [Reference(f"keras-applications:MobileNetV2_{w}", "keras-applications", f"mobilenet_v2_{w}", "keras",
                       "MobileNetV2", (("alpha", alphas[w]),)) for w in ("140", "130", "100", "075", "050", "035")]
    for size in ("Large", "Small"):
        for w in ("100", "075"):
            refs.append(Reference(f"keras-applications:MobileNetV3{size}_{w}", "keras-applications",
                                  f"mobilenet_v3_{size.lower()}_{w}", "keras", f"MobileNetV3{size}",
                                  (("alpha", alphas[w]),)))
        refs.append(Reference(f"keras-applications:MobileNetV3{size}_minimal_100", "keras-applications",
                              f"mobilenet_v3_{size.lower()}_minimal_100", "keras", f"MobileNetV3{size}",
                              (("alpha", 1.0), ("minimalistic", True))))
    return {r.name: r for r in refs}


REFERENCES = _refs()


def reference(name: str) -> Reference:
    if name not in REFERENCES:
        raise KeyError(f"unknown reference model {name!r}; known: {', '.join(REFERENCES)}")
    return REFERENCES[name]


def flavors_of(library: str, variant: str) -> dict[str, str]:
    """flavor -> the reference model of `library` that reproduces `variant` in it (REFERENCES order)."""
    found: dict[str, str] = {}
    for r in REFERENCES.values():
        if r.library == library and r.variant == variant:
            found.setdefault(r.flavor, r.name)
    return found


def library_flavors(library: str) -> set[str]:
    """The flavors of `library`'s reference models (timm: timm and timm_tf)."""
    return {r.flavor for r in REFERENCES.values() if r.library == library}


def not_published(library: str, variant: str) -> str:
    """Why no reference model of `library` fits `variant`: which libraries do have it, else the library's list."""
    elsewhere = sorted({r.name for r in REFERENCES.values() if r.variant == variant and r.library != library})
    if elsewhere:
        return f"{library} publishes no model of {variant}; mnforge port reads it from {', '.join(elsewhere)}"
    known = sorted({r.variant for r in REFERENCES.values() if r.library == library})
    return f"{library} publishes no model of {variant}; its variants: {', '.join(known)}"


def wrong_flavor(library: str, variant: str, flavor: str, given: str = "") -> str:
    """Why `flavor` (`given`: where it came from) does not fit `variant`'s reference models in `library`,
    and the flag to give instead."""
    flavors = flavors_of(library, variant)
    models = " and ".join(f"{name.split(':', 1)[1]} (flavor {f})" for f, name in flavors.items())
    flags = " or ".join(f"--flavor {f}" for f in flavors)
    only = "only " if len(flavors) == 1 else ""
    return f"{library} publishes {variant} {only}as {models}, not in flavor {flavor}{given}; use {flags}"


def for_variant(library: str, variant: str, flavor: str | None = None) -> Reference:
    """The reference model of `library` that the spec's `variant` reproduces; where a library has two
    (timm's mobilenetv3_* and tf_mobilenetv3_*), `flavor` chooses (timm or timm_tf), else the first.
    KeyError (one line: what the library publishes of the variant, the flag to use) if there is none."""
    flavors = flavors_of(library, variant)
    if not flavors:
        raise KeyError(not_published(library, variant))
    if flavor is None:
        return REFERENCES[next(iter(flavors.values()))]
    if flavor not in flavors:
        raise KeyError(wrong_flavor(library, variant, flavor))
    return REFERENCES[flavors[flavor]]
