"""Processes that train keep freed memory for reuse (shared_models/freed_memory.py): a node's process, once it
has loaded the ClientApp, takes its activations from memory it freed, not from fresh pages, as a plain process
does; a user's own malloc settings are left alone. Real processes, counted page faults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tensors of growing sizes made and freed, as a training step's activations are: glibc's default settings map
# and unmap the larger ones (or trim them off the heap) every time, so each step faults in fresh pages.
STEPS = """
import resource, sys, torch
{setup}
def step():
    for size in (1 << 18, 1 << 19, 1 << 20, 1 << 21):
        x = torch.ones(size); y = x * 2; z = y + x
for _ in range(5):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def faults_per_step(setup: str, env: dict | None = None) -> float:
    done = subprocess.run([sys.executable, "-c", STEPS.format(setup=setup)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux only")


def test_a_process_serving_nodes_takes_its_activations_from_freed_memory():
    plain = faults_per_step("")
    node = faults_per_step("import client.client_app")
    assert plain > 500, f"the plain process faulted {plain} pages a step: the pattern no longer shows glibc's default"
    assert node < plain / 10, (node, plain)


def test_the_setting_is_made_once_and_reported():
    script = ("from shared_models.freed_memory import keep_freed_memory\n"
              "print(keep_freed_memory(), keep_freed_memory())")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


@pytest.mark.parametrize("env", [{"MALLOC_TRIM_THRESHOLD_": "131072"},
                                 {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}])
def test_a_users_own_malloc_settings_are_left_alone(env):
    script = ("from shared_models.freed_memory import keep_freed_memory\n"
              "print(keep_freed_memory())")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    assert faults_per_step("import client.client_app", env) > 500  # their setting (trim at 128 KiB) rules
