"""TEST-ONLY broken mechanism for tests/test_privacy_audit.py: DP-SGD without its noise, the ledger unchanged.

The audit's ClientApp (canary slots and all), whose nodes build Opacus's private optimizer as usual and then
set its noise multiplier to 0: every step is clipped but not noised, while the node still calibrates, records
and reports the epsilon of the noise it planned. The audit must catch it.
"""

from __future__ import annotations

import client.client_app as node
from simulations.audit.canary_app import app as canary_app

_real_make_private = node.make_private


def _make_private_without_noise(*args, **kwargs):
    step = _real_make_private(*args, **kwargs)
    step.optimizer.noise_multiplier = 0.0  # the fault: no noise; the ledger spends what the plan said
    return step


node.make_private = _make_private_without_noise
no_noise_app = canary_app
