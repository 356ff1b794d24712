"""A simulation's data, ready before Flower's engine starts.

Writing the embedded synthetic dataset is research tooling, so it happens
here, on the simulation's side, not inside the coordinator. Then the folder
goes through the same check a hospital runs before joining
(``fedemo data check``, client/data_check.py): a folder that holds files but
no usable dataset stops the run with one line naming the problem, instead
of every virtual node failing with a traceback of its own.
"""

from __future__ import annotations

from logging import INFO, WARNING
from pathlib import Path

from flwr.common.logger import log

from client.data_check import check_data_dir
from client.loaders.base import DatasetFormatError
from shared_models.run_settings import RunSettings


def prepare_data(settings: RunSettings, *, check: bool = True) -> Path | None:
    """The dataset folder as an absolute path: synthesised when allowed and empty, then checked.

    An empty ``data-dir`` means the coordinator holds no data (a deployment:
    each hospital's node names its own folder); then there is nothing to do.
    """
    if not settings.data_dir:
        return None
    data_dir = Path(settings.data_dir).expanduser().resolve()
    if not (data_dir.is_dir() and any(data_dir.iterdir())):
        if not settings.synthesize_if_missing:
            raise FileNotFoundError(f"data-dir {data_dir} is missing or empty and synthesize-if-missing is false; "
                                    f"point data-dir at your {settings.dataset} copy")
        from simulations.synthetic_data import synthesize

        log(INFO, "Writing synthetic %s (%d samples, seed %d) to %s", settings.dataset, settings.synth_samples,
            settings.seed, data_dir)
        synthesize(settings.dataset, data_dir, settings.synth_samples, settings.seed,
                   with_faces=settings.task == "fusion")  # the run's one wall-clock figure includes this
    if check:
        # Loading is what fails for a folder without a dataset; decoding every clip is left to the nodes.
        report = check_data_dir(data_dir, settings.dataset, settings.task, decode_audio=False)
        if not report.ready:
            raise DatasetFormatError(data_dir, f"not a usable {settings.dataset} dataset for data-dir: "
                                     + "; ".join(report.problems) + f" (details: fedemo data check {data_dir} "
                                     f"--format {settings.dataset})")
        if report.skipped:  # the folder's own skips, counted once here (each node counts only its own rows')
            shown = "; ".join(f"{s['ref']}: {s['reason']}" for s in report.skipped[:3])
            log(WARNING, "%d files or lines of %s were skipped as unreadable or malformed (%s%s); "
                "`fedemo data check %s --format %s` lists them all", len(report.skipped), data_dir, shown,
                "; ..." if len(report.skipped) > 3 else "", data_dir, settings.dataset)
    return data_dir
