"""The ServerApp that ``flwr run .`` starts: FedEmo's coordinator, after a simulation's data preparation.

The coordinator (server/server_app.py) holds no research tooling: it expects
its ``data-dir`` to hold the dataset. ``fedemo simulate`` prepares the data
before Flower's engine starts; under ``flwr run .`` nothing runs before the
ServerApp, so this app does the same preparation first (write the embedded
synthetic dataset into an empty ``data-dir`` when ``synthesize-if-missing``,
then check the folder as a hospital would) and then hands over to the
coordinator. In a deployment ``data-dir`` is empty: nothing is prepared and
the coordinator runs as it is.

Under ``flwr run`` Flower, not FedEmo, decides how many simulated nodes there
are and what each may use: it reads them from the federation's config
(``--federation-config "num-supernodes=4 client-resources-num-cpus=1"``, or
the federation stored under ``FLWR_HOME``), never from the run config's
``num-supernodes``/``client-num-cpus``/``client-num-gpus``. The first lines
of the run say so, with the numbers in force.
"""

from __future__ import annotations

from dataclasses import replace
from logging import INFO, WARNING

from flwr.app import Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from server.rounds import console
from server.server_app import main as coordinator
from shared_models.settings.run_settings import RunSettings
from simulations.synthetic.data_prep import prepare_data

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    console.begin()  # before the first line: no doubled lines (Opacus's root handler), Flower's chatter hidden
    settings = RunSettings.from_config(context.run_config)
    if settings.data_dir:  # a simulation (a deployment's nodes are real machines with their own resources)
        say_federation(settings, len(list(grid.get_node_ids())))
    # The data is split for the federation's node count (Flower's, not num-supernodes): too few rows for them
    # is one line now, not a failure in every node after the start.
    nodes = len(list(grid.get_node_ids())) if settings.data_dir else settings.num_supernodes
    prepare_data(replace(settings, num_supernodes=nodes))
    coordinator(grid, context)


def say_federation(settings: RunSettings, nodes: int) -> None:
    """What the run config cannot set under ``flwr run``, in our words, with what is in force instead."""
    differs = nodes != settings.num_supernodes
    log(WARNING if differs else INFO,
        "flwr run: %d simulated nodes, as Flower's federation config sets them; the run config's "
        "num-supernodes = %d, client-num-cpus = %g and client-num-gpus = %g apply only to `fedemo simulate`. "
        "To set them here: flwr run . --federation-config \"num-supernodes=%d client-resources-num-cpus=%g "
        "client-resources-num-gpus=%g\"", nodes, settings.num_supernodes, settings.client_num_cpus,
        settings.client_num_gpus, settings.num_supernodes, settings.client_num_cpus, settings.client_num_gpus)
