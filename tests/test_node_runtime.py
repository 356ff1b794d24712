"""No import-time side effects in the node's DP code; the start-up call applies them once, explicitly.

A fresh interpreter records glibc symbol look-ups (Python's ``ctypes.dlsym`` audit event), Opacus's rule tables
(``GRAD_SAMPLERS``, ``NORM_SAMPLERS``) and the warning filters, imports the DP modules, and reports what changed.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import json, sys, warnings
looked_up = []
sys.addaudithook(lambda event, args: looked_up.append(str(args[1])) if event == "ctypes.dlsym" else None)
from opacus.grad_sample import GradSampleModule, GradSampleModuleFastGradientClipping
import shared_models.models.registry  # the models (their segment layers register their own rules on import)
def tables():
    return {"grad": {t.__name__: f"{f.__module__}.{f.__name__}" for t, f in GradSampleModule.GRAD_SAMPLERS.items()},
            "norm": {t.__name__: f"{f.__module__}.{f.__name__}"
                     for t, f in GradSampleModuleFastGradientClipping.NORM_SAMPLERS.items()},
            "warnings": len(warnings.filters)}
before = tables()
import client.local_training, client.privacy.dp_training, client.privacy.private_step, client.privacy.node_runtime
import client.privacy.clipping.book_keeping, client.privacy.clipping.convolution, client.privacy.clipping.layer_rules
after_import = tables()
calls_on_import = list(looked_up)
started = client.privacy.node_runtime.start_node_runtime() if "start" in sys.argv else None
print(json.dumps({"before": before, "after_import": after_import, "dlsym_on_import": calls_on_import,
                  "after_start": tables(), "dlsym_after_start": looked_up, "started": started}))
"""


def _probe(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_dp_modules_changes_no_opacus_rule_no_allocator_setting_no_warning_filter():
    seen = _probe()
    assert seen["after_import"] == seen["before"]
    assert "mallopt" not in seen["dlsym_on_import"]


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_start_node_runtime_sets_the_allocator_and_registers_the_convolution_rules_through_opacus():
    seen = _probe("start")
    assert seen["started"] is True and "mallopt" in seen["dlsym_after_start"]
    rules = seen["after_start"]["grad"]
    assert rules["Conv2d"] == "client.privacy.clipping.convolution.conv2d_grad_sample"
    assert rules["SegmentConv2d"] == "client.privacy.clipping.convolution.segment_conv2d_grad_sample"
    assert seen["after_start"]["norm"] == seen["before"]["norm"]  # no norm rule replaced any more
