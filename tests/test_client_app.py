"""The ClientApp called as a simulation worker calls it: many nodes, one process, real Messages and files."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from client.client_app import app
from shared_models import messages as msgs
from shared_models.models.registry import build_model
from simulations.run_config import load_run_config
from simulations.synthetic.synthetic_data import synthesize


def test_a_process_serving_many_nodes_carries_nothing_from_one_node_to_the_next(tmp_path, task_identity):
    """One worker reuses one model object for every node it serves (client/client_app.py ``_global_model``):
    node 1's reply must be the same before and after the process trained and evaluated node 0 in between."""
    synthesize("fer2013", tmp_path / "fer", 240, 0)
    run_config, settings = load_run_config(None, {"data-dir": str(tmp_path / "fer"), "num-supernodes": 2,
                                                  "partitioner": "iid", "client-threads": 1})
    global_arrays = ArrayRecord(build_model(settings.model).state_dict())

    def ask(partition: int, kind: str) -> Message:
        context = Context(run_id=1, node_id=partition + 1, node_config={"partition-id": partition, "num-partitions": 2},
                          state=RecordDict(), run_config=dict(run_config))
        content = RecordDict({msgs.ARRAYS: global_arrays,
                              msgs.CONFIG: ConfigRecord({msgs.SERVER_ROUND: 1, msgs.DATA_DIR: settings.data_dir})})
        reply = app(message=Message(content, dst_node_id=partition + 1, message_type=kind), context=context)
        assert not reply.has_error(), reply.error
        return reply

    first_train, first_eval = ask(1, MessageType.TRAIN), ask(1, MessageType.EVALUATE)
    other = ask(0, MessageType.TRAIN)
    ask(0, MessageType.EVALUATE)
    again_train, again_eval = ask(1, MessageType.TRAIN), ask(1, MessageType.EVALUATE)

    trained = {k: v.numpy() for k, v in first_train.content[msgs.ARRAYS].items()}
    assert any(not np.array_equal(trained[k], v.numpy()) for k, v in global_arrays.items())  # it did train
    assert any(not np.array_equal(trained[k], v.numpy()) for k, v in other.content[msgs.ARRAYS].items())
    for name, array in again_train.content[msgs.ARRAYS].items():
        assert np.array_equal(array.numpy(), trained[name]), name
    assert dict(again_train.content[msgs.METRICS]) == dict(first_train.content[msgs.METRICS])
    assert dict(again_eval.content[msgs.METRICS]) == dict(first_eval.content[msgs.METRICS])
