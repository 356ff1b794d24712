"""The node's side of secure aggregation (Flower's SecAgg+), switched by the run config.

``secure_aggregation_mod`` sits on our train handler: off, it passes messages through; on, it hands them
to Flower's ``secaggplus_mod`` with ``legacy_fit`` as the inner app, which runs our unchanged train handler
(same DP-SGD, ledger and metrics) and sends the update clipped to ``secagg-clip-norm`` (so it fits
SecAgg+'s quantisation range), metrics in the clear. The coordinator sees only the masked sum.
Protocol details: docs/design_notes.md.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.data.node_data import client_samples
from shared_models import messages as msgs
from shared_models.models.registry import build_model
from shared_models.settings.run_settings import ConfigError, RunSettings


def secure_aggregation_mod(msg: Message, context: Context, call_next) -> Message:
    """Plain training unless ``secure-aggregation`` is on; then SecAgg+ around :func:`legacy_fit`."""
    if not bool(context.run_config.get("secure-aggregation", False)):
        return call_next(msg, context)
    return secaggplus_mod(msg, context, lambda fit_msg, ctx: legacy_fit(fit_msg, ctx, call_next))


def legacy_fit(msg: Message, context: Context, train) -> Message:
    """Answer a legacy ``fitins`` message by running our train handler; reply ``fitres`` with the clipped update."""
    settings = RunSettings.from_config(context.run_config)
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = ConfigRecord(dict(fitins.config))
    # Refuse before training: a weight above max-weight would overflow SecAgg+'s quantised sum,
    # and under DP a refusal after training would have spent budget for nothing.
    samples = client_samples(settings, context.node_config, str(config.get(msgs.DATA_DIR, settings.data_dir)))
    if len(samples.train) > settings.secagg_max_weight:
        raise ConfigError(f"run-config secagg-max-weight = {settings.secagg_max_weight:g}: this node has "
                          f"{len(samples.train)} training samples, its weight in SecAgg+ would overflow; "
                          f"raise secagg-max-weight above the largest node")

    global_state = named_state(settings, parameters_to_ndarrays(fitins.parameters))
    msg.content = RecordDict({msgs.ARRAYS: ArrayRecord(global_state), msgs.CONFIG: config})
    reply = train(msg, context)
    if reply.has_error():
        raise RuntimeError(reply.error.reason)

    trained = reply.content[msgs.ARRAYS].to_torch_state_dict()
    update = [(trained[k].detach().cpu().double() - v.double()).numpy() for k, v in global_state.items()]
    update, clipped = clip_update(update, settings.secagg_clip_norm)
    # Legacy fitres metrics hold scalars only; list-valued metrics (none in training today) stay home.
    metrics = {k: v for k, v in reply.content[msgs.METRICS].items() if isinstance(v, (int, float))}
    metrics.update({k: str(v) for k, v in reply.content[msgs.CLIENT].items()})  # client-id, dp-accountant
    metrics[msgs.UPDATE_CLIPPED] = int(clipped)
    fitres = FitRes(status=Status(code=Code.OK, message="ok"), parameters=ndarrays_to_parameters(update),
                    num_examples=int(metrics[msgs.NUM_EXAMPLES]), metrics=metrics)
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


def named_state(settings: RunSettings, arrays: list[np.ndarray]) -> "OrderedDict[str, torch.Tensor]":
    """The legacy message's unnamed arrays as the model's state_dict (same order as the coordinator sent them)."""
    template = build_model(settings.model, valence_arousal=settings.valence_arousal).state_dict()
    if len(arrays) != len(template):
        raise ValueError(f"the coordinator sent {len(arrays)} arrays; model {settings.model} has {len(template)}")
    state = OrderedDict()
    for (name, ref), arr in zip(template.items(), arrays):
        if tuple(arr.shape) != tuple(ref.shape):
            raise ValueError(f"the coordinator sent {name} with shape {arr.shape}, model {settings.model} "
                             f"expects {tuple(ref.shape)}")
        state[name] = torch.from_numpy(np.array(arr, copy=True)).to(ref.dtype)
    return state


def clip_update(update: list[np.ndarray], max_norm: float) -> tuple[list[np.ndarray], bool]:
    """Scale the whole update down to L2 norm ``max_norm`` if it is longer (as Flower's fixedclipping_mod)."""
    norm = float(np.sqrt(sum(float(np.sum(np.square(u))) for u in update)))
    if norm <= max_norm:
        return update, False
    factor = max_norm / norm
    return [u * factor for u in update], True
