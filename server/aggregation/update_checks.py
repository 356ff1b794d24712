"""Screening of the nodes' training replies before anything is aggregated: one bad reply must not poison the model.

Each reply is checked against the global model it was trained from: structure (names, shapes, dtypes, a
positive weight), finite values, update size (absolute and relative to the round's median), growth over
earlier rounds, and direction (cosine to the median; duplicates). Weights are clipped to a multiple of the
round's lower median. Rejections are recorded by client id and reason; under client-level DP a rejected
node's slot gets a zero update so the release does not depend on it. The rules in full: docs/design_notes.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from flwr.app import ArrayRecord, Message

from server.aggregation.coordinate_sort import sort_by_coordinate
from shared_models import messages as msgs
from shared_models.settings.run_settings import RunSettings


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
    weight_key: str = msgs.NUM_EXAMPLES  # the metric the aggregation weights by: must be a positive number
    weight_ratio: float = 3.0  # clip a weight to this x the round's lower median weight; 0: off
    norm_growth: float = 5.0  # x the median norm of earlier rounds' accepted updates; 0: off
    min_cosine: float = -0.1  # cosine to the round's coordinate-wise median; -1: off

    @classmethod
    def from_settings(cls, settings: RunSettings, weight_key: str) -> "UpdatePolicy":
        """The run's bounds. Under client-level DP the rules that compare updates (the ratio to the round's
        median, the cap from earlier rounds, the direction check, weight clipping: weights are equal there
        anyway) are off: whether one
        hospital's update is kept would then depend on the others', so replacing one hospital could change
        several terms of the noised average, past the 2C/m sensitivity it is accounted for (clipping to the
        norm C bounds every update there anyway). Each update's own checks (shape, finiteness,
        ``update-max-norm``) stay: a rejected update becomes a zero update in its slot (server/privacy/central_dp.py),
        one of the clipped updates the sensitivity covers, so it decides nothing about the release."""
        if settings.central_dp != "off":  # every rule that compares one hospital's update with others' is off
            return cls(norm_ratio=0.0, max_norm=settings.update_max_norm, weight_key=weight_key, weight_ratio=0.0,
                       norm_growth=0.0, min_cosine=-1.0)
        return cls(norm_ratio=settings.update_norm_ratio, max_norm=settings.update_max_norm, weight_key=weight_key,
                   weight_ratio=settings.update_weight_ratio, norm_growth=settings.update_norm_growth,
                   min_cosine=settings.update_min_cosine)


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
    if not reply.has_error() and msgs.CLIENT in reply.content:
        return str(reply.content[msgs.CLIENT].get(msgs.CLIENT_ID, reply.metadata.src_node_id))
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


def update_size(global_arrays: dict[str, np.ndarray]) -> int:
    """The length of a flat update: the floating arrays' values (integer buffers are counters, not weights)."""
    return sum(old.size for old in global_arrays.values() if np.issubdtype(old.dtype, np.floating))


def values_problem_or_norm(reply: Message, global_arrays: dict[str, np.ndarray],
                           update_out: list[np.ndarray] | None = None) -> str | float:
    """Why a structurally sound reply's values are unusable (NaN or Inf), else the L2 norm of its update
    (new - global weights over the floating arrays; integer buffers are counters).

    One pass, each array deserialised once: the coordinator screens every reply of a round while the
    nodes wait for the next message, so this is on the round's critical path. ``update_out`` (when given)
    receives the flat float32 update ``update_vector`` would compute, from the same pass, for a sound reply.
    """
    arrays = next(iter(reply.content.array_records.values()))
    total = 0.0
    flat, at = None, 0
    if update_out is not None:
        flat = np.empty(update_size(global_arrays), np.float32)
    for name, old in global_arrays.items():
        values = arrays[name].numpy()
        if not np.issubdtype(values.dtype, np.floating):
            continue
        finite = np.isfinite(values)
        if not finite.all():
            kind = "NaN" if np.isnan(values).any() else "Inf"
            return f"array {name} holds {int(values.size - finite.sum())} non-finite values ({kind})"
        diff = values.astype(np.float64) - old
        if flat is not None:
            flat[at:at + diff.size] = diff.ravel()  # float64 to float32 as update_vector's astype rounds it
            at += diff.size
        total += float(np.square(diff, out=diff).sum())  # numpy's own sum: no BLAS threads spinning beside the nodes
    if update_out is not None:
        update_out.append(flat)
    return float(np.sqrt(total))


def global_values(global_arrays: ArrayRecord) -> dict[str, np.ndarray]:
    """The global model's arrays as updates are measured against them (floating arrays in float64)."""
    arrays = {name: array.numpy() for name, array in global_arrays.items()}  # each deserialised once
    return {name: a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a for name, a in arrays.items()}


def inspect(reply: Message, current: dict[str, np.ndarray], spec: dict[str, ArraySpec],
            policy: UpdatePolicy, update_out: list[np.ndarray] | None = None) -> str | float:
    """One reply on its own: why it is unusable (structure, weight, values), else its update norm.

    The part of screening that needs no other reply, so the round loop can
    run it as each reply arrives (server/rounds/round_loop.py ``exchange``), while the
    other nodes still train. ``update_out`` receives a sound reply's flat update for the direction check
    (``screen``'s ``updates``), which then neither deserialises the reply again nor recomputes it.
    """
    problem = structure_problem(reply, spec) or weight_problem(reply, policy.weight_key)
    return problem if problem is not None else values_problem_or_norm(reply, current, update_out)


def lower_median(values: list[float]) -> float:
    """The ceil(n/2)-th smallest value: a majority of the values are at least this (half may be hostile)."""
    return float(sorted(values)[(len(values) - 1) // 2])


def clip_weights(replies: list[Message], policy: UpdatePolicy) -> dict[str, list[float]]:
    """Clip each reply's aggregation weight to ``weight_ratio`` x the round's lower median weight, in place.

    A node can claim any ``num-examples``; FedAvg would give one claiming 10^9 the whole round. The lower
    median is a weight most nodes reach, so nodes inflating together cannot raise it. Returns
    {client id: [claimed, used]} for the clipped ones (the round record keeps it).
    """
    if not policy.weight_ratio or len(replies) < 2:
        return {}
    weights = [float(next(iter(r.content.metric_records.values()))[policy.weight_key]) for r in replies]
    cap = policy.weight_ratio * lower_median(weights)
    clipped = {}
    for reply, weight in zip(replies, weights):
        if weight > cap:
            record = next(iter(reply.content.metric_records.values()))
            used = int(cap) if isinstance(record[policy.weight_key], int) else cap
            record[policy.weight_key] = max(used, 1) if isinstance(used, int) else used
            clipped[client_id(reply)] = [weight, float(record[policy.weight_key])]
    return clipped


def update_vector(reply: Message, global_arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The update (new - global weights) over the floating arrays, flattened (float32: only its direction counts)."""
    arrays = next(iter(reply.content.array_records.values()))
    parts = [(arrays[name].numpy().astype(np.float64) - old).astype(np.float32).ravel()
             for name, old in global_arrays.items() if np.issubdtype(old.dtype, np.floating)]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def update_rows(candidates: list[tuple[Message, float]], global_arrays: dict[str, np.ndarray],
                updates: dict[str, np.ndarray], extra_rows: int = 0) -> np.ndarray:
    """The candidates' flat updates as the rows of one float32 matrix, with ``extra_rows`` more rows left for
    the caller: each from ``updates`` where ``inspect`` kept it (taken out: the matrix holds it now), else
    computed from the reply. One allocation, no list of vectors to stack beside it."""
    d = update_size(global_arrays)
    rows = np.empty((len(candidates) + extra_rows, d), np.float32)
    for i, (reply, _) in enumerate(candidates):
        kept = updates.pop(reply.metadata.message_id, None)
        rows[i] = kept if kept is not None and kept.shape == (d,) else update_vector(reply, global_arrays)
    return rows


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two flat updates, summed by numpy itself (BLAS's dot spins threads beside the nodes: 30 ms)."""
    na = float(np.sqrt(np.square(a, dtype=np.float64).sum()))
    nb = float(np.sqrt(np.square(b, dtype=np.float64).sum()))
    return float(np.multiply(a, b, dtype=np.float64).sum() / (na * nb)) if na > 0 and nb > 0 else 0.0


_GRAM_COLUMNS = 1 << 16  # columns per block: a block's float64 copy is 512 KB per update, whatever the model


def gram(rows: np.ndarray) -> np.ndarray:
    """Every pair's inner product of the n float32 rows, (n, n) float64: the float32 products are exact in float64
    and summed there, as ``cosine`` does, in one matrix product per block of columns (bounded memory) instead of
    n^2 / 2 passes over the updates."""
    n, d = rows.shape
    products = np.zeros((n, n))
    for lo in range(0, d, _GRAM_COLUMNS):
        block = rows[:, lo:lo + _GRAM_COLUMNS].astype(np.float64)
        products += block @ block.T
    return products


def coordinate_median(stacked: np.ndarray) -> np.ndarray:
    """``np.median(stacked, axis=0)``, the same values: numpy sorts the short columns of n updates far faster than
    it partitions them (server/aggregation/coordinate_sort.py; the mean of the two middle values as np.median
    takes it; np.median itself where a value is not finite, for its NaN handling)."""
    n = len(stacked)
    if not np.isfinite(stacked).all():
        return np.median(stacked, axis=0)
    ordered = sort_by_coordinate(stacked)
    return ordered[n // 2] if n % 2 else np.mean(ordered[n // 2 - 1:n // 2 + 1], axis=0)


def pair_cosines(rows: np.ndarray) -> np.ndarray:
    """``cosine`` of every pair of rows at once (from ``gram``; 0 where either row is zero)."""
    products = gram(rows)
    norms = np.sqrt(np.maximum(np.diag(products), 0.0))
    scale = np.outer(norms, norms)
    return np.divide(products, scale, out=np.zeros_like(products), where=scale > 0)


DUPLICATE_COSINE = 0.99  # two nodes' updates this close are one update sent twice (replayed or colluding)
# Up to this many updates in a round, each is compared with the median of the others: in a median of few, an
# update's own values (wherever the honest ones disagree) pull the centre towards it (a flipped update measured
# cosine -0.08 to a median of 4 including it). From more on, one update barely moves the median of all.
LEAVE_ONE_OUT_UP_TO = 16


def leave_one_out_medians(stacked: np.ndarray) -> Iterable[np.ndarray]:
    """For each row i of ``stacked`` (n updates), the coordinate-wise median of the other n - 1 rows.

    One sort serves them all: removing row i shifts the sorted positions above its own rank down by one,
    so the others' k-th value is the sorted k-th where i ranks above k, else the (k+1)-th.
    """
    n = len(stacked)
    order = np.argsort(stacked, axis=0, kind="stable")
    ordered = np.take_along_axis(stacked, order, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(n)[:, None].repeat(stacked.shape[1], axis=1), axis=0)
    m = n - 1
    positions = (m // 2,) if m % 2 else (m // 2 - 1, m // 2)
    for i in range(n):
        picked = [np.where(rank[i] > k, ordered[k], ordered[k + 1]) for k in positions]
        yield picked[0] if len(picked) == 1 else (picked[0] + picked[1]) / 2


def direction_rejections(candidates: list[tuple[Message, float]], global_arrays: dict[str, np.ndarray],
                         min_cosine: float, cosines_out: dict[str, float] | None = None,
                         updates: dict[str, np.ndarray] | None = None) -> dict[int, str]:
    """Reasons by candidate index for updates opposed to the round's coordinate-wise median, or duplicated.

    The coordinate-wise median of the round's updates (of the others', in a small round) is the honest
    majority's direction as long as the majority is honest; a sign-flipped update points away from it
    whatever its size. When half the
    candidates or more are flagged, the round has no majority to trust and every candidate is refused.
    ``updates`` holds flat updates ``inspect`` kept, by reply message id; each one used is taken out of it.
    """
    if min_cosine <= -1.0 or len(candidates) < 3:
        return {}
    n = len(candidates)
    with_centre = update_rows(candidates, global_arrays, updates or {}, extra_rows=int(n > LEAVE_ONE_OUT_UP_TO))
    stacked = with_centre[:n]
    if n <= LEAVE_ONE_OUT_UP_TO:  # each update against the median of the others
        cosines = [cosine(v, centre) for v, centre in zip(stacked, leave_one_out_medians(stacked))]
        pairs = pair_cosines(stacked)
    else:  # the median as one more row: its cosines to every update come with the pairs'
        with_centre[n] = coordinate_median(stacked)
        everything = pair_cosines(with_centre)
        cosines, pairs = [float(c) for c in everything[-1, :-1]], everything[:-1, :-1]
    reasons = {i: f"update opposed to the round's median update (cosine {c:.3f} < update-min-cosine {min_cosine:g})"
               for i, c in enumerate(cosines) if c < min_cosine}
    ids = [client_id(reply) for reply, _ in candidates]
    if cosines_out is not None:
        cosines_out.update({cid: round(c, 4) for cid, c in zip(ids, cosines)})
    for i, j in np.argwhere(np.triu(pairs > DUPLICATE_COSINE, k=1)):  # pairs in the order i, then j > i
        c = float(pairs[i, j])
        for a, b in ((int(i), int(j)), (int(j), int(i))):
            reasons.setdefault(a, f"update is the same as client {ids[b]}'s (cosine {c:.4f}): replayed "
                                  f"or colluding nodes")
    if reasons and 2 * len(reasons) >= len(candidates):
        flagged = ", ".join(f"client {ids[i]}" for i in sorted(reasons))
        verdict = f"no honest majority in the round: {len(reasons)} of {len(candidates)} updates flagged ({flagged})"
        return {i: f"{verdict}; its own: {reasons[i]}" if i in reasons else f"{verdict}, so none is trusted"
                for i in range(len(candidates))}
    return reasons


def screen(replies: Iterable[Message], global_arrays: ArrayRecord, spec: dict[str, ArraySpec],
           policy: UpdatePolicy, inspected: dict[str, str | float] | None = None, reference_norm: float = 0.0,
           notes: dict[str, dict] | None = None, updates: dict[str, np.ndarray] | None = None,
           ) -> tuple[list[Message], list[Rejection], dict[str, float]]:
    """Split a round's replies into those fit to aggregate and the rejected ones.

    Replies that carry an error are passed through untouched: Flower's
    strategies drop and log them, and the round record lists them as failures.
    ``inspected`` holds ``inspect``'s verdicts already taken, by reply message id;
    ``reference_norm`` is the median norm of earlier rounds' accepted updates (0: none yet);
    ``notes`` (when given) receives ``weights_clipped`` ({client id: [claimed, used]}) and
    ``update_cosines`` ({client id: cosine to the round's median update}) for the round record;
    ``updates`` holds the flat updates ``inspect`` kept, by message id (the direction check takes them out).
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
    candidates.sort(key=lambda c: (len(client_id(c[0])), client_id(c[0])))

    median = float(np.median([n for _, n in candidates])) if candidates else 0.0
    sized = []
    for reply, norm in candidates:
        reason = None
        if not np.isfinite(norm):
            reason = f"update norm {norm} is not finite"
        elif policy.max_norm and norm > policy.max_norm:
            reason = f"update norm {norm:.4g} exceeds update-max-norm {policy.max_norm:g}"
        elif policy.norm_ratio and len(candidates) >= 3 and median > 0 and norm > policy.norm_ratio * median:
            reason = (f"update norm {norm:.4g} exceeds update-norm-ratio {policy.norm_ratio:g} x the round's "
                      f"median {median:.4g}")
        elif policy.norm_growth and reference_norm > 0 and norm > policy.norm_growth * reference_norm:
            reason = (f"update norm {norm:.4g} exceeds update-norm-growth {policy.norm_growth:g} x the median "
                      f"{reference_norm:.4g} of earlier rounds' accepted updates")
        if reason is None:
            sized.append((reply, norm))
        else:
            rejected.append(Rejection(client_id(reply), reply.metadata.src_node_id, reason))
    if sized and policy.min_cosine > -1.0 and len(sized) >= 3:
        current = global_values(global_arrays) if current is None else current
        cosines: dict[str, float] = {}
        opposed = direction_rejections(sized, current, policy.min_cosine, cosines, updates)
        if notes is not None and cosines:
            notes["update_cosines"] = cosines
        for i, (reply, _) in enumerate(sized):
            if i in opposed:
                rejected.append(Rejection(client_id(reply), reply.metadata.src_node_id, opposed[i]))
        sized = [c for i, c in enumerate(sized) if i not in opposed]
    accepted = [reply for reply, _ in sized]
    weights = clip_weights(accepted, policy)
    if notes is not None and weights:
        notes["weights_clipped"] = weights
    passed.extend(accepted)
    # Replies arrive in whatever order the nodes finish; summing them in client-id order makes the
    # aggregate (float addition is not associative) the same in every run, and a resumed run exact.
    passed.sort(key=lambda r: (len(client_id(r)), client_id(r)))
    return passed, rejected, norms
