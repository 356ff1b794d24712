"""Patients' consent in a simulation: the policy for records a folder's consent manifest does not name.

A deployed hospital sets its own policy in its node config (``consent-default``), which wins over this
key: consent is the hospital's decision, never the researcher's. Simulated nodes read this key.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared_models.settings.checks import need

CONSENT_POLICIES = ("exclude", "include")


@dataclass(frozen=True)
class ConsentSettings:
    consent_default: str

    def check(self) -> None:
        need(self, self.consent_default in CONSENT_POLICIES, "consent-default",
             "choose exclude (records the consent manifest does not name are left out) or include")
