"""The run record names a failed node's problem in one line, as the node said it."""

from server.record.run_record import failure_reason

# What Flower's Ray backend hands the coordinator when a simulated ClientApp raises (abridged, colours kept).
RAY_WRAPPED = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()\x1b[39m "
    "(pid=13416, ip=192.0.2.2, actor_id=1bda05)\n  File \"/work/main/client/client_app.py\", line 113, in train\n"
    "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. Message: round "
    "declined: it would bring epsilon to 8.365 (budget 8); ledger /state/client-29/privacy_ledger.json'>"
)


def test_a_ray_wrapped_node_error_becomes_the_nodes_own_message():
    assert failure_reason(RAY_WRAPPED) == ("round declined: it would bring epsilon to 8.365 (budget 8); "
                                           "ledger /state/client-29/privacy_ledger.json")
    assert "\x1b" not in failure_reason("\x1b[31mdata-path /x: no fer2013.csv\x1b[0m")
    assert failure_reason("data-path /x: no fer2013.csv") == "data-path /x: no fer2013.csv"  # deployed nodes
