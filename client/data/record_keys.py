"""Each record's stable key: a name that does not depend on which other records its folder holds.

Record-level DP compares a node's data with and without one record, so
everything decided per record (its train/test side, its augmentation draws)
is keyed by the record itself, never by its row number: removing one record
shifts the row numbers of every later one. A record read from a file of its
own (an image, a clip) is keyed by its path inside the dataset folder. A row
of a CSV file (FER2013, ``fer2013.csv:17``) has no key of its own and its line
number moves when an earlier line is deleted, so it is keyed by its content
(label and pixels): two identical rows share a key, and are treated alike.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

from client.data.loaders.base import EmotionData

_LINE_REF = re.compile(r".*:\d+")  # "<file>:<line>", a row of a table rather than a file of its own


def record_keys(data: EmotionData) -> list[bytes]:
    """One key per row of ``data``, aligned with its rows (32-byte digests)."""
    keys = []
    for row, ref in enumerate(data.refs):
        ref = str(ref)
        if _LINE_REF.fullmatch(ref):
            if data.faces is None:  # only FER2013 is a table, and it always holds faces
                raise ValueError(f"{data.root}: row {ref} has no content to key it by")
            content = hashlib.sha256(b"row\0" + int(data.labels[row]).to_bytes(8, "big"))
            content.update(np.ascontiguousarray(data.faces[row]).tobytes())
            keys.append(content.digest())
        else:
            keys.append(hashlib.sha256(b"file\0" + ref.encode("utf-8")).digest())
    return keys
