"""The one atomic-write helper: whole files or none, modes kept, and keys never overwritten."""

from __future__ import annotations

import os
import stat

import pytest

from shared_models.atomic_files import atomic_create_bytes, atomic_write_bytes, atomic_write_json


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_replacing_a_file_keeps_its_mode_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    atomic_write_json(target, {"b": 1, "a": [2]}, mode=0o640)
    assert target.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert _mode(target) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failed_write_leaves_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "ledger.json"
    target.write_bytes(b"old")

    def power_cut(*args):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_a_key_is_created_private_whatever_the_umask(tmp_path):
    old_umask = os.umask(0o000)  # the most permissive: the mode must still be 0600
    try:
        atomic_create_bytes(tmp_path / "key.pem", b"secret", mode=0o600)
    finally:
        os.umask(old_umask)
    assert (tmp_path / "key.pem").read_bytes() == b"secret"
    assert _mode(tmp_path / "key.pem") == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_an_existing_key_is_never_overwritten(tmp_path):
    key = tmp_path / "key.pem"
    key.write_bytes(b"the key in use")
    with pytest.raises(FileExistsError):
        atomic_create_bytes(key, b"a second key", mode=0o600)
    assert key.read_bytes() == b"the key in use"
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]
