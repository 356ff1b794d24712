"""Writing prediction records: one JSON object per line, or CSV rows with a fixed header."""

from __future__ import annotations

import csv
import json
from typing import TextIO

from shared_models.taxonomy import EMOTIONS

CSV_COLUMNS = ["file", "frame", "time_s", "box_x", "box_y", "box_w", "box_h", "box_source",
               *[f"p_{e}" for e in EMOTIONS], "emotion", "valence", "arousal", "error"]


class RecordWriter:
    def __init__(self, stream: TextIO, fmt: str = "json"):
        self.stream, self.fmt = stream, fmt
        self.csv = csv.writer(stream) if fmt == "csv" else None
        if self.csv is not None:
            self.csv.writerow(CSV_COLUMNS)

    def write(self, record: dict) -> None:
        if self.csv is None:
            self.stream.write(json.dumps(record) + "\n")
        else:
            box = record.get("box") or [None] * 4
            probs = record.get("probabilities") or {}
            row = [record.get("file"), record.get("frame"), record.get("time_s"), *box, record.get("box_source"),
                   *[probs.get(e) for e in EMOTIONS], record.get("emotion"), record.get("valence"),
                   record.get("arousal"), record.get("error")]
            self.csv.writerow(["" if v is None else v for v in row])
        self.stream.flush()
