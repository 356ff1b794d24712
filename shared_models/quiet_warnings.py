"""Third-party warnings known to be harmless in FedEmo, silenced where they arise, each with the reason.

``install()`` runs once per process: at the top of the ClientApp module (every
node, simulated or deployed) and when the coordinator sets up its console
(server/rounds/console.py). Only the exact messages below are silenced; anything
else from the same libraries still shows. Where a warning is about something
that matters (the randomness behind DP noise) our own statement replaces it:
the coordinator says once per DP run where the noise comes from
(server/rounds/console.py, ``DP_RANDOMNESS``).
"""

from __future__ import annotations

import logging
import sys
import warnings

_installed = False
_PRV_DOMAIN = ("opacus", "accountants", "analysis", "prv")


def install() -> None:
    """Add the filters below to this process (idempotent)."""
    global _installed, _original_showwarning
    if _installed:
        return
    _installed = True

    # torch, on every backward pass of a model whose inputs need no gradient (the face_scatter head on fixed
    # features) under Opacus's per-sample-gradient hooks: the hooks still compute exact per-sample gradients
    # (tests/test_models.py checks them), so the warning says nothing about our runs.
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

    # Opacus's PrivacyEngine(secure_mode=False) warns that its default RNG is not cryptographically secure.
    # FedEmo never uses that RNG for DP: the Poisson masks and the Gaussian noise come from generators seeded
    # from the OS's CSPRNG (client/privacy/dp_training.py, secret_generator); the coordinator states this once per run.
    warnings.filterwarnings("ignore", message="Secure RNG turned off")

    # Ray's driver, at ray.init: a tip about a future default for CUDA_VISIBLE_DEVICES with num_gpus=0. The
    # behaviour it describes is today's and is what client-num-gpus = 0 means; nothing to act on.
    warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)

    # Opacus's PRV accountant sizes its numerical domain with an internal RDP accountant whose "optimal order
    # is the largest alpha" only means that domain bound is loose; the epsilon reported is the PRV one. The
    # same warning from an RDP accountant (dp-accountant = "rdp") bounds the reported epsilon and still shows.
    _original_showwarning = warnings.showwarning
    warnings.showwarning = _showwarning

    # Flower's Ray backend calls terminate() on every actor at the normal end of each simulation, and logs it
    # as a WARNING ("Manually terminating ClientAppActor"): it is the planned shutdown, not a fault.
    logging.getLogger("flwr").addFilter(_drop_actor_termination)


_original_showwarning = warnings.showwarning


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if str(message).startswith("Optimal order is the") and _called_from_prv_domain():
        # Python marked it as shown for rdp.py's line; unmark it so an RDP accountant's own warning still shows.
        registry = getattr(sys.modules.get("opacus.accountants.analysis.rdp"), "__warningregistry__", None)
        if isinstance(registry, dict):
            registry.pop((str(message), category, lineno), None)
        return
    _original_showwarning(message, category, filename, lineno, file, line)


def _called_from_prv_domain() -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        parts = frame.f_code.co_filename.replace("\\", "/").split("/")
        if all(p in parts for p in _PRV_DOMAIN):
            return True
        frame = frame.f_back
    return False


def _drop_actor_termination(record: logging.LogRecord) -> bool:
    return not (record.msg == "Manually terminating %s" and str(record.args and record.args[0]).endswith("Actor"))
