"""Where a run's results go and who signs them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shared_models.settings.checks import need


@dataclass(frozen=True)
class OutputSettings:
    runs_dir: str
    signing_key: str
    run_name: str

    def check(self) -> None:
        need(self, _plain_name(self.run_name), "run-name",
             "must be a plain folder name (no '/', '\\', '..' or leading '.', at most 200 bytes): the run folder "
             "stays inside runs-dir")
        need(self, not self.signing_key or not _inside(self.signing_key, self.runs_dir), "signing-key",
             "lies inside runs-dir; keep the coordinator's key outside run folders")


def _plain_name(name: str) -> bool:
    """A run name that names one folder directly inside runs-dir ("" is a generated one)."""
    return name == "" or ("/" not in name and "\\" not in name and not name.startswith(".")
                          and name.isprintable() and len(name.encode("utf-8", "surrogateescape")) <= 200)


def _inside(path: str, folder: str) -> bool:
    return Path(path).expanduser().resolve().is_relative_to(Path(folder).expanduser().resolve())
