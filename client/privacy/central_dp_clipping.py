"""Client-side clipping for client-level central DP: Flower's own mods, switched by the run config.

With ``central-dp = client-fixed`` or ``client-adaptive`` the coordinator's
DP wrapper sends a clipping norm with each train message, and the node clips
its update to that norm before it leaves (Flower's ``fixedclipping_mod`` /
``adaptiveclipping_mod``, which also reports whether clipping happened). In
every other mode the message passes through untouched, so one ClientApp
serves all modes.
"""

from __future__ import annotations

from flwr.app import Context, Message
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod

_MODS = {"client-fixed": fixedclipping_mod, "client-adaptive": adaptiveclipping_mod}


def central_dp_clipping_mod(msg: Message, context: Context, call_next) -> Message:
    mod = _MODS.get(str(context.run_config.get("central-dp", "off")))
    return mod(msg, context, call_next) if mod else call_next(msg, context)
