"""The Control-API seam: the one module that reaches Flower's non-public SuperLink Control client.

``fedemo node check`` asks the SuperLink which keys are registered, as
``flwr supernode list`` does; Flower 1.41 exposes that only through its CLI's
internals (``flwr.supercore.control``). ``PRIVATE_*`` list every non-public
name, signature and attribute used here; tests/test_flower_seams.py checks
each against the installed Flower.
"""

from __future__ import annotations

from typing import Any

PRIVATE_NAMES = [("flwr.proto.control_pb2", "ListNodesRequest"), ("flwr.supercore.control", "ControlHttpClient"),
                 ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor")]
PRIVATE_CALLS = [
    ("flwr.supercore.control", "ControlHttpClient.from_server_address",
     ["server_address", "insecure", "root_certificates", "interceptors"]),
    ("flwr.supercore.control", "ControlHttpClient.close", ["self"]),
    ("flwr.supercore.interceptors", "RuntimeVersionHttpInterceptor.__init__", ["self", "component_name"]),
]
# (module, Class, attribute): the RPC we call and the fields of its answer we read, checked on real instances.
PRIVATE_ATTRIBUTES = [
    ("flwr.supercore.control", "ControlHttpClient", "ListNodes"),
    ("flwr.proto.control_pb2", "ListNodesResponse", "nodes_info"),
    *[("flwr.proto.node_pb2", "NodeInfo", field) for field in ("node_id", "name", "owner_name", "status",
                                                               "public_key")],
]


def list_nodes(superlink: str, root_certificates: bytes) -> list[Any]:
    """The SuperLink's ``ListNodes`` answer over TLS (each a NodeInfo: node_id, name, owner_name, status,
    public_key)."""
    from flwr.proto.control_pb2 import ListNodesRequest  # pylint: disable=no-name-in-module
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

    client = ControlHttpClient.from_server_address(
        server_address=superlink, insecure=False, root_certificates=root_certificates,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr CLI")])
    try:
        return list(client.ListNodes(ListNodesRequest()).nodes_info)
    finally:
        client.close()
