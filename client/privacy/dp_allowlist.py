"""What a DP node may send: an allowlist of outgoing records and keys, enforced where the node replies.

Under ``dp = true`` every value that leaves the node must be accounted in its
ledger (the DP-SGD model, the noised group counts) or independent of its
records' content (its id, its training-set size, the ledger's own figures).
The handlers build their replies that way; this mod checks each reply
against ``shared_models.messages``'s allowlist before Flower sends it, and
fails closed: a reply carrying anything else is not sent, and the node
answers with an error naming the offending keys. It sits innermost (closest
to the handler), so it sees exactly what the handler produced before
SecAgg+ masks it or a clipping mod clips it; the outgoing audit log
(outermost) still records what actually left.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from shared_models import messages as msgs
from shared_models.settings.run_settings import RunSettings


class UnaccountedRelease(RuntimeError):
    """A DP node's reply carries a value its ledger does not account for; nothing was sent."""


def disallowed_content(content: RecordDict, message_type: str, *, eval_counts_noised: bool) -> list[str]:
    """Every record or key in a DP node's reply that the allowlist does not permit ("record.key")."""
    allowed_metrics = msgs.dp_allowed_metrics(message_type, eval_counts_noised=eval_counts_noised)
    if allowed_metrics is None:
        return [f"any {message_type} reply"]
    bad = []
    for name, record in content.items():
        if name == msgs.ARRAYS and isinstance(record, ArrayRecord) and message_type == "train":
            continue  # the DP-SGD model itself: noised and accounted
        if name == msgs.METRICS and isinstance(record, MetricRecord):
            bad += [f"{name}.{key}" for key in record
                    if key not in allowed_metrics and not (message_type == "evaluate" and msgs.is_group_key(key))]
            continue
        if name == msgs.CLIENT and isinstance(record, ConfigRecord):
            bad += [f"{name}.{key}" for key in record if key not in msgs.DP_CLIENT_KEYS]
            continue
        bad.append(f"{name} ({type(record).__name__})")
    return bad


def dp_allowlist_mod(msg: Message, context: Context, call_next) -> Message:
    """Pass the handler's reply through unless dp is on and it carries an unaccounted value.

    A message type a DP node never answers (the audio-sums query) is refused
    before the handler runs, so nothing is even computed.
    """
    settings = RunSettings.from_config(context.run_config)
    message_type = msg.metadata.message_type
    noised = settings.eval_dp_noise_multiplier > 0
    if settings.dp and msgs.dp_allowed_metrics(message_type, eval_counts_noised=noised) is None:
        raise UnaccountedRelease(f"refusing to answer a {message_type!r} message under dp = true: its values "
                                 "(e.g. per-band audio sums) are not noised or accounted (docs/privacy.md)")
    reply = call_next(msg, context)
    if not settings.dp or reply.has_error():
        return reply
    bad = disallowed_content(reply.content, message_type, eval_counts_noised=noised)
    if bad:
        raise UnaccountedRelease(
            f"refusing to send {', '.join(bad)}: under dp = true a node sends only values its privacy "
            "ledger accounts for or that do not depend on its records (docs/privacy.md, 'What leaves a node')")
    return reply
