"""Every run of the registry has an adapter that satisfies the typed protocol (FrameworkAdapter), set up
by the same code the workers use. One process per run: instantiating an adapter imports its framework,
and TensorFlow must never share an interpreter with torchvision."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from generators.frameworks import RUNS

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import sys
from conformance.frameworks import adapter, set_up_process
from conformance.frameworks.protocol import FrameworkAdapter
key = sys.argv[1]
set_up_process(key)
instance = adapter(key)
assert isinstance(instance, FrameworkAdapter), f"{type(instance)} does not implement FrameworkAdapter"
assert instance.run_key == key, instance.run_key
print("ok", key)
"""


@pytest.mark.parametrize("key", list(RUNS))
def test_every_run_has_an_adapter_that_satisfies_the_protocol(key):
    proc = subprocess.run([sys.executable, "-c", PROBE, key], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=False,
                          env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": "",
                               "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith(f"ok {key}")


def test_an_unknown_run_is_refused_with_the_known_ones():
    from conformance.frameworks import adapter

    with pytest.raises(ValueError, match="expected one of torch, keras"):
        adapter("pytorch")
