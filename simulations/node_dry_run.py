"""``fedemo node dry-run``: a hospital's trial of the federation's run that spends nothing.

Reads the node config and run config as ``fedemo node approve`` does, writes a synthetic dataset of the
node's format and size into a scratch folder and runs the real ClientApp on it round by round (DP-SGD,
ledger, noised counts, outgoing audit) against a scratch state folder; the real ``state-dir`` is never
written. It lives in simulations/ because the synthetic generator is research tooling.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any


def add_dry_run_command(node_commands: argparse._SubParsersAction) -> None:
    from client.tools.commands import add_plan_arguments

    p = node_commands.add_parser("dry-run", help="train on synthetic data of the node's shape through the real "
                                 "ClientApp and show what it would send and spend (spends nothing)")
    add_plan_arguments(p)
    p.add_argument("--rounds", type=int, default=None, help="rounds to run (default: the run config's own)")
    p.add_argument("--json", action="store_true", help="machine-readable result")
    p.set_defaults(func=dry_run_command)


def dry_run(node_config: dict[str, Any], run_config_file: str | Path, rounds: int | None = None) -> dict[str, Any]:
    """Each round's training and evaluation reply of the real ClientApp on synthetic data of the node's shape."""
    import numpy as np
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict

    from client.client_app import app
    from client.data.node_data import client_samples
    from client.tools.spend_plan import APPROVE_FIRST, run_settings, state_dir_of
    from shared_models import messages as msgs
    from shared_models.models.registry import build_model
    from simulations.synthetic.synthetic_data import synthesize

    settings = run_settings(run_config_file)
    real = client_samples(settings, node_config, "")  # the real folder: only its format and size are used
    state_dir_of(node_config)  # a deployed node's config must name one; it is not touched here
    fmt = str(node_config.get("dataset-format", settings.dataset))
    size = len(real.train) + len(real.test)
    rounds = rounds or settings.num_server_rounds
    with tempfile.TemporaryDirectory(prefix="fedemo-dry-run-") as scratch:
        data = synthesize(fmt, Path(scratch) / "data", size, seed=0)
        # the synthetic folder has no consent manifest: the real one would name none of its records
        fake = {k: v for k, v in node_config.items() if k not in (APPROVE_FIRST, "consent-manifest")}
        fake.update({APPROVE_FIRST: False, "data-path": str(data), "state-dir": str(Path(scratch) / "state"),
                     "dataset-id": f"dry-run:{real.dataset_id}"})
        context = Context(run_id=1, node_id=1, node_config=fake, state=RecordDict(), run_config=settings.to_config())
        weights = ArrayRecord(build_model(settings.model, valence_arousal=settings.valence_arousal).state_dict())

        def ask(kind: str, server_round: int, arrays: ArrayRecord) -> Message:
            content = RecordDict({msgs.ARRAYS: arrays, msgs.CONFIG: ConfigRecord({msgs.SERVER_ROUND: server_round})})
            msg = Message(content=content, metadata=Metadata(
                run_id=1, message_id=f"dry-run-{time.time_ns()}", src_node_id=0, dst_node_id=1,
                reply_to_message_id="", group_id="", created_at=time.time(), ttl=3600.0, message_type=kind))
            reply = app(msg, context)
            if reply.has_error():
                raise RuntimeError(f"dry run, round {server_round} ({kind}): the node replied with an error: "
                                   f"{reply.error.reason}")
            return reply

        result: dict[str, Any] = {"dataset_format": fmt, "synthetic_samples": size, "train_records": len(real.train),
                                  "rounds": []}
        for server_round in range(1, rounds + 1):
            trained = ask("train", server_round, weights)
            weights = trained.content[msgs.ARRAYS]  # this node alone: its update is the next model
            evaluated = ask("evaluate", server_round, weights)
            train_metrics, eval_metrics = dict(trained.content[msgs.METRICS]), dict(evaluated.content[msgs.METRICS])
            confusion = np.asarray(eval_metrics[msgs.CONFUSION], dtype=float)
            result["rounds"].append({
                "round": server_round,
                "epsilon": train_metrics.get(msgs.DP_EPSILON_SPENT),
                "noise_multiplier": train_metrics.get(msgs.DP_NOISE_MULTIPLIER),
                "eval_epsilon": eval_metrics.get(msgs.GROUP_DP_EPSILON_SPENT),
                "accuracy": float(np.trace(confusion.reshape(7, 7)) / max(confusion.sum(), 1.0))
                if confusion.size == 49 else None,
                "numbers_sent": sum(int(np.prod(a.shape)) for a in weights.values()),
            })
        from client.tools.sent_log import describe as describe_sent

        result["sent"] = describe_sent(Path(scratch) / "state")
    return result


def describe(result: dict[str, Any], state_dir: str) -> str:
    lines = [f"Dry run: {len(result['rounds'])} rounds of the real ClientApp on {result['synthetic_samples']} "
             f"synthetic {result['dataset_format']} samples (the node's own size and format), in a scratch folder:"]
    for r in result["rounds"]:
        eps = "no DP" if r["epsilon"] is None else f"training epsilon {r['epsilon']:.3f} (noise {r['noise_multiplier']:.3f})"
        acc = "" if r["accuracy"] is None else f", accuracy on its synthetic test split {r['accuracy']:.3f}"
        lines.append(f"  round {r['round']}: sent {r['numbers_sent']:,} weights, {eps}{acc}")
    lines.append(f"Nothing was written in {state_dir}: no ledger entry, no approval, no audit line; the scratch "
                 "folder is gone. What the node would send, as `fedemo node sent` shows it:")
    lines.append(result["sent"])
    return "\n".join(lines)


def dry_run_command(args: argparse.Namespace) -> int:
    from client.tools.spend_plan import parse_node_config

    node_config = parse_node_config(args.node_config)
    result = dry_run(node_config, args.run_config, args.rounds)
    print(json.dumps(result, indent=2) if args.json else describe(result, str(node_config.get("state-dir"))))
    return 0
