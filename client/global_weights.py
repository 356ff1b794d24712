"""The coordinator's weights in a message, decoded once per process for every node that receives the same ones.

A simulation worker serves many nodes, and in a round each of their train and evaluate messages carries the
same global model: decoding it (numpy's ``.npy`` header parse and a copy per array) was about 4 ms of a 50-sample
face_cnn node's message, paid 50 times a round per worker. The last weights decoded are kept (one model, bounded)
and handed out again only for a message whose arrays have the same names, serialisation and bytes: the same
bytes decode to the same tensors. Callers copy them (``load_state_dict``) and never write into them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
from flwr.app import ArrayRecord

__all__ = ["global_state_dict"]

_lock = threading.Lock()  # a worker with vectorised clients prepares several nodes' messages in threads
_last: tuple[list[tuple[str, str, bytes]], OrderedDict[str, torch.Tensor]] | None = None


def _signature(record: ArrayRecord) -> list[tuple[str, str, bytes]]:
    """What ``to_torch_state_dict`` reads: each array's name, serialisation type and bytes (in order)."""
    return [(name, str(array.stype), array.data) for name, array in record.items()]


def global_state_dict(record: ArrayRecord) -> OrderedDict[str, torch.Tensor]:
    """``record.to_torch_state_dict()``, decoded again only when the arrays differ from the last ones decoded.

    The tensors are shared with every later caller that receives the same weights: read them, do not write.
    """
    global _last
    signature = _signature(record)
    with _lock:
        if _last is not None and _last[0] == signature:  # bytes compare by memcmp: microseconds for a model
            return _last[1]
    state = record.to_torch_state_dict()
    with _lock:
        _last = (signature, state)
    return state
