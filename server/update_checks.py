"""Screening of the nodes' training replies before anything is aggregated.

Flower's aggregators average (or take medians of) whatever arrays arrive: one
node that sends NaN, an array of the wrong shape or an update scaled by 1e6
poisons the global model for good or crashes the round. Every reply is
checked here against the global model it was trained from:

1. structure: the same array names, shapes and dtypes as the global model
   (a wrong shape would crash the average; a wrong dtype means a different
   model or a node that was tampered with), and a positive aggregation
   weight (``num-examples``, or ``update-weight`` under client-level DP);
2. values: no NaN or Inf anywhere;
3. size: the L2 norm of the update (new - global weights, floating arrays
   only) within ``update-max-norm`` (absolute, off by default) and within
   ``update-norm-ratio`` x the median norm of the round's structurally sound
   updates (relative: it needs no knowledge of the model's scale, and one
   hostile node cannot move the median of several honest ones; it needs at
   least three sound updates in the round, as a median of two is no referee).

A rejected reply is not aggregated; its client id and reason are recorded.
A sign-flipped update passes all three (its norm is an honest one): that is
the job of robust aggregation (``aggregation``, server/strategy.py).

Under client-level DP (``central-dp``) a rejection must not be visible in
the released model beyond what clipping bounds: size and finiteness depend
on the hospital's data, so the DP wrapper (server/central_dp.py) gives every
sampled node without a passed reply a *zero update* in a fixed number of
slots, and the release, its noise and its account are the same whatever was
rejected. The record of the rejection stays in the coordinator's own
metrics.jsonl, which central DP trusts (it sees every update anyway).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message

from shared_models.run_settings import RunSettings


@dataclass(frozen=True)
class ArraySpec:
    """What one array of the global model must look like in a reply."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class UpdatePolicy:
    """The bounds a training reply must meet (run-config ``update-norm-ratio``, ``update-max-norm``)."""

    norm_ratio: float = 10.0  # x the round's median update norm; 0: off
    max_norm: float = 0.0  # absolute bound; 0: off
    weight_key: str = "num-examples"  # the metric the aggregation weights by: must be a positive number

    @classmethod
    def from_settings(cls, settings: RunSettings, weight_key: str) -> "UpdatePolicy":
        """The run's bounds. Under client-level DP the ratio to the round's median is off: whether one
        hospital's update is kept would then depend on the others', so replacing one hospital could change
        several terms of the noised average, past the 2C/m sensitivity it is accounted for (clipping to the
        norm C bounds every update there anyway). Each update's own checks (shape, finiteness,
        ``update-max-norm``) stay: a rejected update becomes a zero update in its slot (server/central_dp.py),
        one of the clipped updates the sensitivity covers, so it decides nothing about the release."""
        ratio = 0.0 if settings.central_dp != "off" else settings.update_norm_ratio
        return cls(norm_ratio=ratio, max_norm=settings.update_max_norm, weight_key=weight_key)


@dataclass(frozen=True)
class Rejection:
    """One reply that was not aggregated, and why (a metrics.jsonl ``train.rejected`` entry)."""

    client: str
    node_id: int
    reason: str

    def to_json(self) -> dict:
        return {"client": self.client, "node_id": self.node_id, "reason": self.reason}


def model_spec(arrays: ArrayRecord) -> dict[str, ArraySpec]:
    """Names, shapes and dtypes of the global model, read from its ArrayRecord."""
    return {name: ArraySpec(tuple(array.shape), str(array.dtype)) for name, array in arrays.items()}


def client_id(reply: Message) -> str:
    """The node's own client id when it sent one, else Flower's node id (a failed reply has no content)."""
    if not reply.has_error() and "client" in reply.content:
        return str(reply.content["client"].get("client-id", reply.metadata.src_node_id))
    return str(reply.metadata.src_node_id)


def weight_problem(reply: Message, key: str) -> str | None:
    """Why a reply's aggregation weight is unusable (Flower's FedAvg would crash on it or be ruled by it)."""
    records = list(reply.content.metric_records.values())
    weight = records[0].get(key) if len(records) == 1 else None
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
        return f"metric {key} (its aggregation weight) is {weight!r}, not a positive number"
    return None


def structure_problem(reply: Message, spec: dict[str, ArraySpec]) -> str | None:
    """Why a reply's arrays do not fit the global model, or None when they do."""
    records = list(reply.content.array_records.values())
    if len(records) != 1:
        return f"expected one array record, got {len(records)}"
    arrays = records[0]
    missing, extra = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
    if missing or extra:
        return f"array names differ from the global model (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, want in spec.items():
        got = arrays[name]
        if tuple(got.shape) != want.shape:
            return f"array {name} has shape {tuple(got.shape)}, the global model's is {want.shape}"
        if str(got.dtype) != want.dtype:
            return f"array {name} has dtype {got.dtype}, the global model's is {want.dtype}"
    return None


def values_problem_or_norm(reply: Message, global_arrays: dict[str, np.ndarray]) -> str | float:
    """Why a structurally sound reply's values are unusable (NaN or Inf), else the L2 norm of its update
    (new - global weights over the floating arrays; integer buffers are counters).

    One pass, each array deserialised once: the coordinator screens every reply of a round while the
    nodes wait for the next message, so this is on the round's critical path.
    """
    arrays = next(iter(reply.content.array_records.values()))
    total = 0.0
    for name, old in global_arrays.items():
        values = arrays[name].numpy()
        if not np.issubdtype(values.dtype, np.floating):
            continue
        finite = np.isfinite(values)
        if not finite.all():
            kind = "NaN" if np.isnan(values).any() else "Inf"
            return f"array {name} holds {int(values.size - finite.sum())} non-finite values ({kind})"
        diff = values.astype(np.float64) - old
        total += float(np.square(diff, out=diff).sum())  # numpy's own sum: no BLAS threads spinning beside the nodes
    return float(np.sqrt(total))


def global_values(global_arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The global model's arrays as updates are measured against them (floating arrays in float64)."""
    arrays = {name: array.numpy() for name, array in global_arrays.items()}  # each deserialised once
    return {name: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a for name, a in arrays.items()}


def inspect(reply: Message, current: dict[str, np.ndarray], spec: dict[str, ArraySpec],
            policy: UpdatePolicy) -> str | float:
    """One reply on its own: why it is unusable (structure, weight, values), else its update norm.

    The part of screening that needs no other reply, so the round loop can
    run it as each reply arrives (server/rounds.py ``exchange``), while the
    other nodes still train.
    """
    problem = structure_problem(reply, spec) or weight_problem(reply, policy.weight_key)
    return problem if problem is not None else values_problem_or_norm(reply, current)


def screen(replies: Iterable[Message], global_arrays: ArrayRecord, spec: dict[str, ArraySpec],
           policy: UpdatePolicy, inspected: dict[str, str | float] | None = None,
           ) -> tuple[list[Message], list[Rejection], dict[str, float]]:
    """Split a round's replies into those fit to aggregate and the rejected ones.

    Replies that carry an error are passed through untouched: Flower's
    strategies drop and log them, and the round record lists them as failures.
    ``inspected`` holds ``inspect``'s verdicts already taken, by reply message id.
    Returns (replies to aggregate, in client-id order; rejections; update norm by client id).
    """
    passed, rejected, norms = [], [], {}
    candidates: list[tuple[Message, float]] = []
    inspected = inspected or {}
    current = None
    for reply in replies:
        if reply.has_error():
            passed.append(reply)
            continue
        checked = inspected.get(reply.metadata.message_id)
        if checked is None:
            current = global_values(global_arrays) if current is None else current
            checked = inspect(reply, current, spec, policy)
        if isinstance(checked, str):
            rejected.append(Rejection(client_id(reply), reply.metadata.src_node_id, checked))
            continue
        norm = checked
        norms[client_id(reply)] = round(norm, 6)
        candidates.append((reply, norm))

    median = float(np.median([n for _, n in candidates])) if candidates else 0.0
    for reply, norm in candidates:
        reason = None
        if not np.isfinite(norm):
            reason = f"update norm {norm} is not finite"
        elif policy.max_norm and norm > policy.max_norm:
            reason = f"update norm {norm:.4g} exceeds update-max-norm {policy.max_norm:g}"
        elif policy.norm_ratio and len(candidates) >= 3 and median > 0 and norm > policy.norm_ratio * median:
            reason = (f"update norm {norm:.4g} exceeds update-norm-ratio {policy.norm_ratio:g} x the round's "
                      f"median {median:.4g}")
        if reason is None:
            passed.append(reply)
        else:
            rejected.append(Rejection(client_id(reply), reply.metadata.src_node_id, reason))
    # Replies arrive in whatever order the nodes finish; summing them in client-id order makes the
    # aggregate (float addition is not associative) the same in every run, and a resumed run exact.
    passed.sort(key=lambda r: (len(client_id(r)), client_id(r)))
    return passed, rejected, norms
