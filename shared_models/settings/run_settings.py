"""The run configuration, parsed and checked once, for the coordinator and the nodes alike.

Flower hands both sides the same flat run config (pyproject's
``[tool.flwr.app.config]`` fused with a config file from ``configs/``). Parsing
it here, with a clear error per bad key, means a typo in a config stops the run
at start with the key's name instead of failing inside 50 clients.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from shared_models.config_error import ConfigError
from shared_models.messages import UPDATE_WEIGHT as UPDATE_WEIGHT_KEY  # every train reply carries it as 1
from shared_models.settings.privacy_modes import check_supported_combination

__all__ = ["ConfigError", "RunSettings", "UPDATE_WEIGHT_KEY"]

TASKS = ("face", "voice", "fusion")
CENTRAL_DP_MODES = ("off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")
PARTITIONERS = ("iid", "dirichlet", "natural", "demographic")
REWEIGHT_ATTRIBUTES = ("sex", "age", "race", "ethnicity")  # demographic attributes a run may reweight by
DATASET_TASKS = {"fer2013": "face", "rafdb": "face", "cremad": "voice", "ravdess": "voice"}
# server/aggregation/strategy.py maps each to a Flower strategy; docs/configuration.md says which privacy modes each allows
# auto: server/aggregation/robust_aggregation.py picks one (a trimmed mean from 5 nodes per round)
AGGREGATIONS = ("auto", "fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "bulyan")


KEYS_LISTED_IN = "docs/configuration.md and pyproject.toml's [tool.flwr.app.config]"
_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class RunSettings:
    """Every key of ``[tool.flwr.app.config]``; the defaults live there, not here."""

    task: str
    dataset: str
    data_dir: str
    synthesize_if_missing: bool
    synth_samples: int
    model: str
    valence_arousal: bool
    partitioner: str
    dirichlet_alpha: float
    demographic_attribute: str
    demographic_alpha: float
    min_partition_size: int
    test_fraction: float
    seed: int
    num_supernodes: int
    client_num_cpus: float
    client_num_gpus: float
    num_server_rounds: int
    fraction_train: float
    fraction_evaluate: float
    min_available_nodes: int
    server_momentum: float
    aggregation: str  # robustness: server/aggregation/strategy.py (and which privacy modes each combines with)
    robust_malicious_nodes: int
    robust_trim_beta: float
    update_norm_ratio: float  # update screening: server/aggregation/update_checks.py
    update_max_norm: float
    update_norm_growth: float
    update_min_cosine: float
    update_weight_ratio: float
    divergence_rounds: int  # the divergence guard: server/rounds/divergence_guard.py
    round_timeout: float  # the round deadline: server/rounds/round_loop.py
    min_trained_nodes: int
    resume: str  # a run folder to continue from its last checkpoint (server/record/checkpoint.py)
    local_epochs: int
    batch_size: int
    optimizer: str
    learning_rate: float
    momentum: float
    weight_decay: float
    augment: bool
    feature_normalisation: str
    feature_fixed_mean: float
    feature_fixed_std: float
    device: str
    client_threads: int
    simulation_backend: str  # fedemo simulate only: local | ray (simulations/engine/local_backend.py)
    simulation_workers: int
    dp: bool
    dp_epsilon: float
    dp_delta: float
    dp_max_grad_norm: float
    dp_max_noise_multiplier: float
    dp_accountant: str
    dp_secure_mode: bool
    state_dir: str
    node_sent_log: bool  # simulated nodes also write the outgoing-message audit (client/tools/outgoing_audit.py)
    central_dp: str
    central_dp_noise_multiplier: float
    central_dp_clipping_norm: float
    central_dp_epsilon: float
    central_dp_delta: float
    central_dp_target_quantile: float
    central_dp_clip_lr: float
    central_dp_clipped_count_stddev: float
    secure_aggregation: bool
    secagg_num_shares: float
    secagg_reconstruction_threshold: float
    secagg_clip_norm: float
    secagg_clipping_range: float
    secagg_quantization_range: int
    secagg_max_weight: float
    fairness_min_group_size: int
    fairness_gap_threshold: float
    eval_dp_noise_multiplier: float
    fairness_reweight: str
    runs_dir: str
    signing_key: str
    run_name: str

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "RunSettings":
        """Parse Flower's flat run config (hyphenated keys); unknown keys are refused."""
        known = {f.name.replace("_", "-"): f for f in fields(cls)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise unknown_keys_error(unknown, known)
        missing = sorted(set(known) - set(config))
        if missing:
            raise ConfigError(f"run-config lacks keys: {', '.join(missing)} (defaults live in pyproject.toml)")
        values = {f.name: _coerce(key, config[key], _TYPES[f.type]) for key, f in known.items()}
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def private(self) -> bool:
        """Whether any differential-privacy mechanism is on (sample-level DP-SGD or client-level central DP)."""
        return self.dp or self.central_dp != "off"

    @property
    def federated_normalisation(self) -> bool:
        """Whether the coordinator asks nodes for their audio sums (never under any DP: they are not privatised)."""
        return self.feature_normalisation == "federated" or (self.feature_normalisation == "auto" and not self.private)

    def to_config(self) -> dict[str, Any]:
        return {k.replace("_", "-"): v for k, v in asdict(self).items()}

    def validate(self) -> None:
        from shared_models.models.registry import MODELS, model_task  # torch: loaded once a config's keys are known

        def need(ok: bool, key: str, why: str) -> None:
            if not ok:
                raise ConfigError(f"run-config {key} = {getattr(self, key.replace('-', '_'))!r}: {why}")

        need(self.task in TASKS, "task", f"choose one of {', '.join(TASKS)}")
        need(self.dataset in DATASET_TASKS, "dataset", f"choose one of {', '.join(DATASET_TASKS)}")
        need(self.model in MODELS, "model", f"choose one of {', '.join(MODELS)}")
        need(model_task(self.model) == self.task, "model", f"serves task {model_task(self.model)!r}, not {self.task!r}")
        fits = DATASET_TASKS[self.dataset] == self.task or (self.task == "fusion" and self.dataset == "cremad")
        need(fits, "dataset", f"cannot serve task {self.task!r}")
        need(not (self.valence_arousal and self.task == "face"), "valence-arousal",
             "the face datasets have no valence/arousal targets")
        need(self.partitioner in PARTITIONERS, "partitioner", f"choose one of {', '.join(PARTITIONERS)}")
        need(self.dirichlet_alpha > 0, "dirichlet-alpha", "must be > 0")
        need(self.demographic_alpha > 0, "demographic-alpha", "must be > 0")
        need(self.min_partition_size >= 2, "min-partition-size", "must be >= 2 (a train and a test sample)")
        need(0 < self.test_fraction < 1, "test-fraction", "must be between 0 and 1")
        need(self.synth_samples > 0, "synth-samples", "must be > 0")
        need(0 <= self.seed < 2**32, "seed", "must be in [0, 2**32) (numpy's seeds are unsigned 32-bit)")
        need(self.num_supernodes >= 1, "num-supernodes", "must be >= 1")
        need(self.client_num_cpus > 0, "client-num-cpus", "must be > 0")
        need(0 <= self.client_num_gpus <= 1, "client-num-gpus", "must be in [0, 1]")
        need(self.simulation_backend in ("local", "ray"), "simulation-backend", "choose local or ray")
        need(self.simulation_workers >= 0, "simulation-workers", "must be >= 0 (0: automatic)")
        need(self.num_server_rounds >= 1, "num-server-rounds", "must be >= 1")
        need(0 < self.fraction_train <= 1, "fraction-train", "must be in (0, 1]")
        need(0 < self.fraction_evaluate <= 1, "fraction-evaluate", "must be in (0, 1]")
        need(self.min_available_nodes >= 1, "min-available-nodes", "must be >= 1")
        need(0 <= self.server_momentum < 1, "server-momentum", "must be in [0, 1)")
        need(self.server_momentum == 0 or self.central_dp == "off", "server-momentum",
             "not with central-dp: the momentum would carry past rounds' un-noised averages into every release")
        need(self.server_momentum == 0 or not self.secure_aggregation, "server-momentum",
             "not with secure-aggregation (its rounds run plain FedAvg)")
        need(self.aggregation in AGGREGATIONS, "aggregation", f"choose one of {', '.join(AGGREGATIONS)}")
        need(self.aggregation in ("auto", "fedavg") or self.central_dp == "off", "aggregation",
             "client-level central-dp accounts FedAvg's clipped, equally weighted mean only; use fedavg")
        need(self.aggregation in ("auto", "fedavg") or not self.secure_aggregation, "aggregation",
             "secure-aggregation shows the coordinator only the sum of the updates; only fedavg works on a sum")
        need(self.aggregation in ("auto", "fedavg") or self.server_momentum == 0, "aggregation",
             "server-momentum (FedAvgM) is an average's momentum; use fedavg with it")
        need(self.robust_malicious_nodes >= 0, "robust-malicious-nodes", "must be >= 0")
        need(0 <= self.robust_trim_beta < 0.5, "robust-trim-beta", "must be in [0, 0.5)")
        need(self.aggregation != "bulyan" or self.num_supernodes >= 4 * self.robust_malicious_nodes + 3,
             "aggregation", f"bulyan needs at least 4 x robust-malicious-nodes + 3 = "
             f"{4 * self.robust_malicious_nodes + 3} nodes per round (num-supernodes {self.num_supernodes})")
        need(self.aggregation not in ("krum", "multikrum")
             or self.num_supernodes >= 2 * self.robust_malicious_nodes + 3, "aggregation",
             f"krum needs at least 2 x robust-malicious-nodes + 3 = {2 * self.robust_malicious_nodes + 3} nodes")
        need(self.update_norm_ratio == 0 or self.update_norm_ratio > 1, "update-norm-ratio",
             "must be 0 (off) or > 1 (a multiple of the round's median update norm)")
        need(self.update_max_norm >= 0, "update-max-norm", "must be >= 0 (0: no absolute bound)")
        need(self.update_norm_growth == 0 or self.update_norm_growth > 1, "update-norm-growth",
             "must be 0 (off) or > 1 (a multiple of earlier rounds' median accepted update norm)")
        need(-1 <= self.update_min_cosine < 1, "update-min-cosine", "must be in [-1, 1) (-1: off)")
        need(self.update_weight_ratio == 0 or self.update_weight_ratio >= 1, "update-weight-ratio",
             "must be 0 (off) or >= 1 (a multiple of the round's lower median num-examples)")
        need(self.divergence_rounds >= 0, "divergence-rounds", "must be >= 0 (0: no divergence guard)")
        need(self.round_timeout == 0 or self.round_timeout >= 1, "round-timeout",
             "must be 0 (sized from the first round) or >= 1 second")
        need(self.min_trained_nodes >= 1, "min-trained-nodes", "must be >= 1")
        need(not self.resume or not self.secure_aggregation, "resume",
             "not with secure-aggregation: its state (SecAgg+ rounds) is not checkpointed")
        need(self.local_epochs >= 1, "local-epochs", "must be >= 1")
        need(self.batch_size >= 1, "batch-size", "must be >= 1")
        need(self.optimizer in ("adam", "sgd"), "optimizer", "choose adam or sgd")
        need(self.learning_rate > 0, "learning-rate", "must be > 0")
        need(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        need(self.weight_decay >= 0, "weight-decay", "must be >= 0")
        need(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
             "choose auto, cpu or cuda[:N]")
        need(self.dp_epsilon > 0, "dp-epsilon", "must be > 0")
        need(self.dp_delta == 0 or 0 < self.dp_delta < 1, "dp-delta",
             "must be 0 (1/(10 n) for a node of n training records) or in (0, 1), and each node refuses one of "
             "1/n or more: delta is the probability that the epsilon guarantee fails outright, so it must be well "
             "below 1/n, or a mechanism that releases one whole record at random would satisfy it")
        need(self.dp_max_grad_norm > 0, "dp-max-grad-norm", "must be > 0")
        need(self.dp_max_noise_multiplier > 0.05, "dp-max-noise-multiplier", "must be > 0.05")
        need(self.dp_accountant == "pld", "dp-accountant",
             "choose pld: a DP node sends its training-set size, so training is accounted under replace-one, which "
             "only dp-accounting's PLD computes for Poisson-sampled DP-SGD (Opacus's prv and rdp account add/remove "
             "one record; ledgers written with them still load, and their events are recomputed under replace-one)")
        need(self.client_threads >= 1, "client-threads", "must be >= 1")
        need(self.feature_normalisation in ("auto", "federated", "fixed"), "feature-normalisation",
             "choose auto, federated or fixed")
        need(not (self.dp and self.feature_normalisation == "federated"), "feature-normalisation",
             "federated normalisation sends each node's un-noised per-band audio sums, which the DP budget does "
             "not cover; use auto or fixed with dp = true")
        need(not (self.central_dp != "off" and self.feature_normalisation == "federated"), "feature-normalisation",
             "federated normalisation puts every node's un-noised per-band audio statistics into the released "
             "global model, which client-level DP (central-dp) does not cover; use auto or fixed with central-dp")
        need(not (self.dp and self.fairness_reweight), "fairness-reweight",
             "not with dp = true: each weight comes from the node's private group counts, so removing one record "
             "changes every other record's weight and DP-SGD's per-sample sensitivity no longer holds")
        need(not self.dp_secure_mode or secure_mode_available(), "dp-secure-mode",
             "Opacus's secure mode needs torchcsprng, which is not installed (no build exists for this torch); "
             "set it to false: the Poisson masks and the noise are then drawn from generators seeded from the "
             "OS's CSPRNG, which the coordinator cannot know (docs/privacy.md)")
        need(self.feature_fixed_std > 0, "feature-fixed-std", "must be > 0")
        need(self.fairness_min_group_size >= 1, "fairness-min-group-size", "must be >= 1")
        need(self.fairness_gap_threshold >= 0, "fairness-gap-threshold", "must be >= 0")
        need(self.eval_dp_noise_multiplier == 0 or self.eval_dp_noise_multiplier >= 0.1, "eval-dp-noise-multiplier",
             "must be 0 (off) or >= 0.1")
        need(self.fairness_reweight in ("", *REWEIGHT_ATTRIBUTES), "fairness-reweight",
             f"choose \"\" (off) or one of {', '.join(REWEIGHT_ATTRIBUTES)}")
        need(self.central_dp in CENTRAL_DP_MODES, "central-dp", f"choose one of {', '.join(CENTRAL_DP_MODES)}")
        need(self.central_dp == "off" or self.central_dp_noise_multiplier > 0, "central-dp-noise-multiplier",
             "must be > 0 when central-dp is on (no noise, no privacy)")
        need(self.central_dp_clipping_norm > 0, "central-dp-clipping-norm", "must be > 0")
        need(self.central_dp_epsilon >= 0, "central-dp-epsilon", "must be >= 0 (0: no limit)")
        need(0 <= self.central_dp_delta < 1, "central-dp-delta", "must be in [0, 1) (0: 1/(10 nodes))")
        need(0 <= self.central_dp_target_quantile <= 1, "central-dp-target-quantile", "must be in [0, 1]")
        need(self.central_dp_clip_lr > 0, "central-dp-clip-lr", "must be > 0")
        need(self.central_dp_clipped_count_stddev >= 0, "central-dp-clipped-count-stddev", "must be >= 0")
        need(_plain_name(self.run_name), "run-name",
             "must be a plain folder name (no '/', '\\', '..' or leading '.', at most 200 bytes): the run folder "
             "stays inside runs-dir")
        need(not self.signing_key or not _inside(self.signing_key, self.runs_dir), "signing-key",
             "lies inside runs-dir; keep the coordinator's key outside run folders")
        need(0 < self.secagg_num_shares <= 1, "secagg-num-shares", "must be in (0, 1] (a share of the sampled nodes)")
        need(0 < self.secagg_reconstruction_threshold <= 1, "secagg-reconstruction-threshold",
             "must be in (0, 1] (a share of secagg-num-shares)")
        need(self.secagg_clip_norm > 0, "secagg-clip-norm", "must be > 0")
        need(self.secagg_clipping_range >= self.secagg_clip_norm, "secagg-clipping-range",
             "must be >= secagg-clip-norm, or SecAgg+ cuts off coordinates of a clipped update")
        need(self.secagg_max_weight >= 1, "secagg-max-weight", "must be >= 1 (the largest node's training samples)")
        # SecAgg+ sums every node's quantised vector modulo 2**32: the sum must not wrap around.
        need(2 <= self.secagg_quantization_range < 2**32, "secagg-quantization-range", "must be in [2, 2**32)")
        need(not self.secure_aggregation or self.num_supernodes * self.secagg_quantization_range < 2**32,
             "secagg-quantization-range", f"times num-supernodes ({self.num_supernodes}) must stay below 2**32")
        check_supported_combination(self)  # privacy settings that do not work together (docs/privacy.md)


def unknown_keys_error(unknown: Iterable[str], known: Iterable[str], where: str = "") -> ConfigError:
    """One line naming each unknown key, the known key it most resembles, and where every key is listed.

    ``where`` names the source (a config file, ``--set``); the caller raises the result.
    """
    known = sorted(known)
    named = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6) or difflib.get_close_matches(
            key.replace("_", "-"), known, n=1, cutoff=0.6)  # num_server_rounds: Python's spelling of a key
        named.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    noun = "key" if len(named) == 1 else "keys"
    return ConfigError(f"{where + ': ' if where else ''}unknown run-config {noun} {', '.join(named)}; "
                       f"every key is listed in {KEYS_LISTED_IN}")


def secure_mode_available() -> bool:
    """Whether Opacus's secure_mode can run here (it imports torchcsprng)."""
    return importlib.util.find_spec("torchcsprng") is not None


def _plain_name(name: str) -> bool:
    """A run name that names one folder directly inside runs-dir ("" is a generated one)."""
    return name == "" or ("/" not in name and "\\" not in name and not name.startswith(".")
                          and name.isprintable() and len(name.encode("utf-8", "surrogateescape")) <= 200)


def _inside(path: str, folder: str) -> bool:
    return Path(path).expanduser().resolve().is_relative_to(Path(folder).expanduser().resolve())


def _coerce(key: str, value: Any, kind: type) -> Any:
    """TOML gives ints where floats are meant (lr = 1); anything else mistyped is an error."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):  # TOML's inf/nan: never a setting
        raise ConfigError(f"run-config {key} = {value!r}: must be a finite number")
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"run-config {key} = {value!r}: expected true or false")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"run-config {key} = {value!r}: expected an integer")
    if not isinstance(value, kind):
        raise ConfigError(f"run-config {key} = {value!r}: expected {kind.__name__}")
    return value


# Keys a resumed run may change: where the run lives, how many rounds it plans, and the machines it runs on.
# Everything else decides what was already trained or how it was accounted (model, data, seed, privacy,
# aggregation, ...): changing it midway would sign one run's report over two different runs.
RESUMABLE_KEYS = frozenset({"num-server-rounds", "round-timeout", "resume", "runs-dir", "run-name",
                            "simulation-backend",
                            "simulation-workers", "client-num-cpus", "client-num-gpus", "client-threads", "device"})


def resume_changes(saved: Mapping[str, Any], resumed: Mapping[str, Any]) -> dict[str, list[Any]]:
    """{key: [saved value, resumed value]} for every key ``resumed`` sets to another value than ``saved``."""
    missing = object()
    return {key: [saved.get(key), value] for key, value in sorted(resumed.items())
            if saved.get(key, missing) != value}


def check_resume_changes(changes: Mapping[str, list[Any]], run_dir: str | Path) -> None:
    """Refuse, by name, every change a resumed run may not make (``RESUMABLE_KEYS`` may change)."""
    refused = {key: pair for key, pair in changes.items() if key not in RESUMABLE_KEYS}
    if refused:
        listed = "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in refused.items())
        raise ConfigError(f"{run_dir}: {', '.join(refused)} cannot change on resume ({listed}): the run's "
                          f"rounds so far were trained with the saved value; only "
                          f"{', '.join(sorted(RESUMABLE_KEYS - {'resume', 'runs-dir', 'run-name'}))} may. "
                          "Start a new run for a different config")
