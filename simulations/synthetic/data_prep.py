"""A simulation's data, ready before Flower's engine starts (``fedemo simulate``, ``fedemo baseline``).

Writes the embedded synthetic dataset here, on the research side, not in the coordinator; then runs the
check a hospital runs (``fedemo data check``) with the run's partitioner and a sample of decoded clips, so a
folder without a usable dataset stops the run with one line naming the problem instead of every virtual
node failing with its own traceback. Flagged faces and clips are counted in the run's log.
"""

from __future__ import annotations

from logging import INFO, WARNING
from pathlib import Path

from flwr.common.logger import log

from client.tools.data_check import check_data_dir
from client.data.loaders.base import DatasetFormatError, printable, utf8_problem
from client.data.partitioning import PartitionSpec
from server.server_app import dataset_folder, holds_files
from shared_models.settings.run_settings import RunSettings

DECODE_SAMPLE = 64  # clips decoded before the engine starts (~0.5 s); the nodes decode and count the rest


def prepare_data(settings: RunSettings, *, check: bool = True) -> Path | None:
    """The dataset folder as an absolute path: synthesised when allowed and empty, then checked.

    An empty ``data-dir`` means the coordinator holds no data (a deployment:
    each hospital's node names its own folder); then there is nothing to do.
    """
    if not settings.data_dir:
        return None
    data_dir = Path(settings.data_dir).expanduser().resolve()
    not_text = utf8_problem(data_dir)
    if not_text:  # before anything is written into it: the run's records could not name it
        raise DatasetFormatError(printable(data_dir), f"data-dir: {not_text}")
    if settings.synthesize_if_missing and not holds_files(data_dir):
        from simulations.synthetic.synthetic_data import synthesize

        log(INFO, "Writing synthetic %s (%d samples, seed %d) to %s", settings.dataset, settings.synth_samples,
            settings.seed, data_dir)
        synthesize(settings.dataset, data_dir, settings.synth_samples, settings.seed,
                   with_faces=settings.task == "fusion")  # the run's one wall-clock figure includes this
    data_dir = dataset_folder(settings)  # the coordinator's own check: a missing or empty folder, in one line
    if check:
        # Loading and splitting are what fail for a folder without a dataset; a sample of the clips is decoded
        # (an all-NaN folder is decoded whole), the rest is left to the nodes, which skip and count bad clips.
        spec = PartitionSpec.from_settings(settings, settings.num_supernodes)
        report = check_data_dir(data_dir, settings.dataset, settings.task, decode_limit=DECODE_SAMPLE,
                                partition_spec=spec, consent_default=settings.consent_default)
        if not report.ready:
            shown = printable(data_dir)
            raise DatasetFormatError(shown, f"not a usable {settings.dataset} dataset for data-dir: "
                                     + "; ".join(report.problems) + f" (details: fedemo data check {shown} "
                                     f"--format {settings.dataset} --nodes {spec.num_partitions} "
                                     f"--min-partition-size {spec.min_size})")
        for kind, refs in report.flagged.items():  # kept, but counted in the run's log
            log(WARNING, "%s: %d in %s kept but flagged (first: %s); `fedemo data check` lists them",
                kind, len(refs), printable(data_dir), ", ".join(refs[:3]))
        if report.skipped:  # the folder's own skips, counted once here (each node counts only its own rows')
            shown = "; ".join(f"{s['ref']}: {s['reason']}" for s in report.skipped[:3])
            log(WARNING, "%d files or lines of %s were skipped as unreadable or malformed (%s%s); "
                "`fedemo data check %s --format %s` lists them all", len(report.skipped), printable(data_dir), shown,
                "; ..." if len(report.skipped) > 3 else "", printable(data_dir), settings.dataset)
        if report.consent.get("applied"):  # the folder's consent, counted once here (nodes count their withdrawals)
            c = report.consent
            log(INFO, "%s: consent manifest applied (sha256 %s...): %d yes, %d no, %d not named (consent-default "
                "%s): %d records left out", printable(data_dir), c["sha256"][:12], c["yes"], c["no"], c["missing"],
                c["policy"], c["excluded"])
    return data_dir
