"""The spec's analytic description against published figures, rounding, and per-flavor width rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from spec import describe, load_spec, resolve_architecture
from spec.model import Rounding
from spec.rounding import make_divisible

PUBLISHED = yaml.safe_load((Path(__file__).parent / "data" / "published.yaml").read_text())
SPEC = load_spec()

TORCHVISION = {"mobilenet_v2": "mobilenet_v2_100", "mobilenet_v3_large": "mobilenet_v3_large_100",
               "mobilenet_v3_small": "mobilenet_v3_small_100"}


@pytest.mark.parametrize("reference, variant", sorted(TORCHVISION.items()))
def test_torchvision_params_and_gmacs_exact(reference, variant):
    published = PUBLISHED["torchvision"][reference]
    desc = describe(SPEC, variant, "torchvision", 224, 1000)
    assert desc.params == published["params"], f"{variant}: {desc.params:,} params, torchvision {published['params']:,}"
    assert round(desc.macs / 1e9, 3) == published["gmacs"], f"{variant}: {desc.macs:,} MACs, torchvision {published['gmacs']} G"


def test_mobilenet_v1_paper_row():
    desc = describe(SPEC, "mobilenet_v1_100", None, 224, 1000)
    assert round(desc.macs / 1e6) == 569, f"{desc.macs:,} MACs, the V1 paper 569 M"
    assert round(desc.params / 1e6, 1) == 4.2, f"{desc.params:,} params, the V1 paper 4.2 M"
    assert (desc.params, desc.macs) == (4_231_976, 568_740_352)


PAPER_VARIANTS = {"mobilenet_v1_1.0_224": "mobilenet_v1_100", "mobilenet_v2_1.0_224": "mobilenet_v2_100",
                  "mobilenet_v3_large_1.0_224": "mobilenet_v3_large_100",
                  "mobilenet_v3_small_1.0_224": "mobilenet_v3_small_100",
                  "mobilenet_v3_large_0.75_224": "mobilenet_v3_large_075",
                  "mobilenet_v3_small_0.75_224": "mobilenet_v3_small_075"}


@pytest.mark.parametrize("paper_name", sorted(PUBLISHED["papers"]))
def test_paper_figures(paper_name):
    """Papers print rounded figures from their own counters: params agree to 0.11 M (the V2 paper's
    3.4 M is low; torchvision's exact 3,504,872 is held exactly above), MACs to 1 M (the V3 paper
    rounds V3-Small 0.75 to 44 M; we count 43.40 M, with torchvision's convention)."""
    published = PUBLISHED["papers"][paper_name]
    desc = describe(SPEC, PAPER_VARIANTS[paper_name], "tf", 224, 1000)
    assert abs(desc.params / 1e6 - published["params_m"]) <= 0.11, (
        f"{paper_name}: {desc.params / 1e6:.3f} M params, paper {published['params_m']} M")
    assert abs(desc.macs / 1e6 - published["macs_m"]) <= 1.0, (
        f"{paper_name}: {desc.macs / 1e6:.2f} M MACs, paper {published['macs_m']} M")


@pytest.mark.parametrize("value, expected", [
    (12, 16), (18, 24), (5.6, 8), (8.4, 8), (20.8, 24), (33.6, 32), (44.8, 48), (89.6, 88), (134.4, 136),
    (1600, 1600), (147.2, 144), (3, 8),
])
def test_make_divisible(value, expected):
    assert make_divisible(value, Rounding(divisor=8, min_ratio=0.9)) == expected


@pytest.mark.parametrize("variant, flavor, stem, first_expanded, fc", [
    ("mobilenet_v3_large_075", "tf", 16, 16, 1280),          # head kept at 1280 below 1.0
    ("mobilenet_v3_large_075", "torchvision", 16, 16, 960),  # torchvision scales the head
    ("mobilenet_v3_large_125", "tf", 24, 24, 1600),          # scaled above 1.0
    ("mobilenet_v3_large_125", "keras", 16, 16, 1600),       # keras.applications keeps the stem at 16
    ("mobilenet_v3_large_125", "timm", 24, 24, 1280),        # timm keeps num_features 1280
    ("mobilenet_v3_large_050", "tf", 8, 8, 1280),            # TF-slim scales the stem
    ("mobilenet_v3_large_050", "timm", 16, 16, 1280),        # timm fixes it below 0.75
])
def test_v3_width_rules_per_flavor(variant, flavor, stem, first_expanded, fc):
    arch = resolve_architecture(SPEC.spec, variant, flavor)
    assert (arch.stem.out, arch.blocks[0].expanded, arch.fc.out) == (stem, first_expanded, fc)


def test_expansion_ratio_vs_absolute():
    # Block 2 of V3-Large (exp 64 from 16) at 1.25: ratio on the rounded input (24 * 4 = 96) or scaled 64 -> 80.
    assert resolve_architecture(SPEC.spec, "mobilenet_v3_large_125", "tf").blocks[1].expanded == 96
    assert resolve_architecture(SPEC.spec, "mobilenet_v3_large_125", "torchvision").blocks[1].expanded == 80


def test_minimalistic_has_no_se_no_hard_swish_no_5x5():
    arch = resolve_architecture(SPEC.spec, "mobilenet_v3_large_minimal_100", "tf")
    assert all(b.squeeze == 0 and b.kernel == 3 and b.activation == "relu" for b in arch.blocks)
    assert {arch.stem.activation, arch.last_conv.activation, arch.fc.activation} == {"relu"}
    desc = describe(SPEC, "mobilenet_v3_large_minimal_100")
    assert desc.params == 3_924_288


def test_describe_shapes_layers_and_non_square_input():
    desc = describe(SPEC, "mobilenet_v3_small_100", "tf", (224, 160), 10)
    names = [layer.name for layer in desc.layers]
    assert len(names) == len(set(names)), "canonical layer names are unique"
    assert desc.block_shapes["stem"] == (16, 112, 80)
    assert desc.block_shapes["last_conv"] == (576, 7, 5)
    assert desc.block_shapes["classifier"] == (10, 1, 1)
    assert desc.params == 2_542_856 - 1_025_000 + (1024 * 10 + 10)
    assert sum(layer.state for layer in desc.layers) == desc.state == 12_112


def test_every_variant_resolves_at_every_published_resolution():
    for name, (family, _) in SPEC.spec.variants().items():
        for resolution in SPEC.spec.families[family].resolutions:
            for flavor in SPEC.spec.flavors:
                desc = describe(SPEC, name, flavor, resolution, 1000)
                if desc.encoder:  # MobileNetV5's 300M encoder: the neck's 2048-channel map, 16x16 at any size
                    assert desc.output == "neck" and desc.block_shapes["neck"] == (2048, 16, 16)
                else:
                    assert desc.block_shapes["classifier"] == (1000, 1, 1)
                assert desc.params > 0 and desc.macs > 0


def test_published_variant_set():
    names = set(SPEC.spec.variants())
    assert {f"mobilenet_v1_{w}" for w in ("100", "075", "050", "025")} <= names
    assert {f"mobilenet_v2_{w}" for w in ("140", "130", "100", "075", "050", "035")} <= names
    for size in ("large", "small"):
        assert {f"mobilenet_v3_{size}_{w}" for w in ("125", "100", "075", "050", "035", "minimal_100")} <= names
    assert {f"mobilenet_v4_{n}" for n in ("conv_small", "conv_medium", "conv_large", "hybrid_medium",
                                          "hybrid_large")} <= names
    assert {"mobilenet_edgetpu_100", "mobilenet_edgetpu_075"} <= names
    assert {"mobilenet_v5_300m_encoder", "mobilenet_v5_300m", "mobilenet_v5_base"} <= names
    assert len(names) == 32


V4_PAPER = PUBLISHED["mobilenet_v4_paper"]


@pytest.mark.parametrize("variant", sorted(V4_PAPER))
def test_mobilenet_v4_paper_table(variant):
    """The paper's table rounds to 0.1 M / 0.1 G. Conv-Small matches within that rounding. The Medium and
    Large rows of timm's released definitions (held exactly below) count 5.1-5.6% more params and
    6-8% more MACs than the paper prints: those rows are held to 9%, with the measured gap reported."""
    published = V4_PAPER[variant]
    desc = describe(SPEC, variant, "timm", published["resolution"], 1000)
    params_gap = desc.params / 1e6 / published["params_m"] - 1
    macs_gap = desc.macs / 1e9 / published["gmacs"] - 1
    message = (f"{variant} at {published['resolution']}: {desc.params / 1e6:.2f} M params ({params_gap:+.1%} vs paper "
               f"{published['params_m']} M), {desc.macs / 1e9:.3f} G MACs ({macs_gap:+.1%} vs paper {published['gmacs']} G)")
    if variant == "mobilenet_v4_conv_small":
        assert round(desc.params / 1e6, 1) == published["params_m"] and round(desc.macs / 1e9, 1) == published["gmacs"], message
    else:
        assert 0 <= params_gap <= 0.09 and 0 <= macs_gap <= 0.09, message


@pytest.mark.parametrize("variant", sorted(PUBLISHED["mobilenet_edgetpu"]))
def test_mobilenet_edgetpu_published(variant):
    """The README truncates (990,670,464 MACs is "990 M", 2,989,441 params "2.9 M"): compare truncated."""
    published = PUBLISHED["mobilenet_edgetpu"][variant]
    desc = describe(SPEC, variant, "tf", 224, 1001)
    assert desc.macs // 10**6 == published["macs_m"], f"{variant}: {desc.macs:,} MACs, published {published['macs_m']} M"
    assert desc.params // 10**5 == round(published["params_m"] * 10), (
        f"{variant}: {desc.params:,} params, published {published['params_m']} M")


def test_mobilenet_v4_params_exactly_timm():
    """timm is the oracle: its models, built with random weights in a PyTorch process of their own (timm
    imports torchvision, which must never follow TensorFlow into a process), count exactly the spec's
    trainable parameters, and the CPU FLOP counter (which misses the attention kernel) the spec's MACs
    less the attention products."""
    import json
    import subprocess
    import sys

    names = [f"mobilenetv4_{n}" for n in ("conv_small", "conv_medium", "conv_large", "hybrid_medium", "hybrid_large")]
    script = (
        "import json, sys, timm, torch\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "out = {}\n"
        "for name in sys.argv[1:]:\n"
        "    model = timm.create_model(name, pretrained=False).eval()\n"
        "    with FlopCounterMode(display=False) as counter, torch.no_grad():\n"
        "        model(torch.zeros(1, 3, 224, 224))\n"
        "    out[name] = [sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2]\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    for name in names:
        variant = name.replace("mobilenetv4", "mobilenet_v4")
        desc = describe(SPEC, variant, "timm", 224, 1000)
        attention = sum(layer.macs for layer in desc.layers if layer.kind == "attention")
        assert counts[name][0] == desc.params, f"{variant}: timm {counts[name][0]:,} params, spec {desc.params:,}"
        assert counts[name][1] == desc.macs - attention, (
            f"{variant}: timm {counts[name][1]:,} MACs, spec {desc.macs:,} less {attention:,} in attention")


def test_mobilenet_v5_params_and_macs_exactly_timm():
    """MobileNetV5 against timm the same way, its attention unfused (TIMM_FUSED_ATTN=0: the FLOP counter
    then sees the attention products too), at each model's published size: params and MACs equal."""
    import json
    import os
    import subprocess
    import sys

    from conformance.porting.references import REFERENCES

    models = {"timm:mobilenetv5_300m_enc": 768, "timm:mobilenetv5_300m": 256, "timm:mobilenetv5_base": 256}
    request = {name: [REFERENCES[name].builder, dict(REFERENCES[name].kwargs), size] for name, size in models.items()}
    script = (
        "import json, sys, timm, torch\n"
        "from torch.utils.flop_counter import FlopCounterMode\n"
        "out = {}\n"
        "for name, (builder, kwargs, size) in json.loads(sys.argv[1]).items():\n"
        "    model = timm.create_model(builder, pretrained=False, **kwargs).eval()\n"
        "    with FlopCounterMode(display=False) as counter, torch.no_grad():\n"
        "        model(torch.zeros(1, 3, size, size))\n"
        "    out[name] = [sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2]\n"
        "    del model\n"
        "print(json.dumps(out))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, json.dumps(request)], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TIMM_FUSED_ATTN": "0"})
    assert result.returncode == 0, result.stderr[-2000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    for name, size in models.items():
        ref = REFERENCES[name]
        desc = describe(SPEC, ref.variant, ref.flavor, size, 1000)
        assert counts[name] == [desc.params, desc.macs], f"{ref.variant}: timm {counts[name]}, spec {desc.params, desc.macs}"
