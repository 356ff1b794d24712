"""A federation whose honest-looking updates overflow the aggregation: every value finite, the result not.

Every node trains as FedEmo's own ClientApp does, then puts one weight at
3e38 (float32's largest is 3.4e38). Each reply passes the update screen
(finite values, equal norms, the same direction), but the coordinate-wise
median of two such float32 updates is their mean, which overflows to
infinity: the aggregation itself produces a non-finite global model. Used by
tests/test_checkpoint_faults.py through
``run_simulation(client_app="tests.overflow_app:app")``.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MessageType

from tests.fault_apps import app_with_mod

HUGE = np.float32(3e38)


def overflow_mod(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN or reply.has_error():
        return reply
    arrays = {k: a.numpy().copy() for k, a in reply.content["arrays"].items()}
    first = next(k for k, v in arrays.items() if np.issubdtype(v.dtype, np.floating))
    arrays[first].flat[0] = HUGE
    reply.content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
    return reply


app = app_with_mod(overflow_mod)
