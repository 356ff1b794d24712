"""Suite-wide fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def coordinator_key_outside_home(tmp_path_factory):
    """Every run signs its report with the coordinator's key; in tests that key lives in a temp folder.

    Without this, any test that runs a simulation would create the real
    ``~/.config/fedemo/coordinator_ed25519.pem`` of whoever runs the suite.
    """
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDEMO_SIGNING_KEY", str(tmp_path_factory.mktemp("coordinator-key") / "coordinator_ed25519.pem"))
    yield
    mp.undo()


@pytest.fixture
def task_identity():
    """Flower's Message needs the process's task identity; tests that build Messages outside an engine set one."""
    from flwr.supercore.task_identity import TaskIdentity

    before = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = before
