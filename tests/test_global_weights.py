"""A worker decodes a global model once for every node that receives it (client/global_weights.py): the same
bytes give back the tensors decoded before; any other bytes, names or order are decoded anew."""

from __future__ import annotations

import pickle

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from client.global_weights import global_state_dict
from shared_models.models.registry import build_model


def _record(seed: int) -> ArrayRecord:
    torch.manual_seed(seed)
    return ArrayRecord(build_model("face_cnn").state_dict())


def _equal(state: dict, record: ArrayRecord) -> bool:
    want = record.to_torch_state_dict()
    return list(state) == list(want) and all(torch.equal(state[k], want[k]) for k in want)


def test_the_same_weights_in_another_message_are_not_decoded_again():
    record = _record(0)
    first = global_state_dict(record)
    received = pickle.loads(pickle.dumps(record))  # as a worker receives each node's message: new objects, same bytes
    assert received is not record
    assert global_state_dict(received) is first
    assert _equal(first, record)


def test_one_value_changed_anywhere_is_decoded_anew():
    record = _record(1)
    before = global_state_dict(record)
    for name in list(record.keys())[::4]:  # a weight early, in the middle and late in the model
        values = record[name].numpy().copy()
        values.reshape(-1)[-1] += 1.0  # the last value: the header and the rest of the bytes stay the same
        changed = ArrayRecord({k: (Array(values) if k == name else v) for k, v in record.items()})
        got = global_state_dict(changed)
        assert got is not before and _equal(got, changed), name
        assert not torch.equal(got[name], before[name])
        assert global_state_dict(record) is not got and _equal(global_state_dict(record), record)


def test_other_names_or_order_are_decoded_anew():
    record = _record(2)
    state = global_state_dict(record)
    names = list(record.keys())
    reordered = ArrayRecord({k: record[k] for k in reversed(names)})
    got = global_state_dict(reordered)
    assert got is not state and list(got) == list(reversed(names))
    renamed = ArrayRecord({("x" + k if k == names[0] else k): v for k, v in record.items()})
    assert list(global_state_dict(renamed))[0] == "x" + names[0]


def test_a_model_trained_from_them_leaves_them_unchanged():
    """``load_state_dict`` copies: training the model a node loaded must not move the weights the next node gets."""
    record = _record(3)
    model = build_model("face_cnn")
    model.load_state_dict(global_state_dict(record))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert _equal(global_state_dict(pickle.loads(pickle.dumps(record))), record)
    assert not np.array_equal(next(model.parameters()).detach().numpy(), next(iter(record.values())).numpy())
