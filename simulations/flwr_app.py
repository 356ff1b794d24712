"""The ServerApp that ``flwr run .`` starts: FedEmo's coordinator, after a simulation's data preparation.

The coordinator (server/server_app.py) holds no research tooling: it expects
its ``data-dir`` to hold the dataset. ``fedemo simulate`` prepares the data
before Flower's engine starts; under ``flwr run .`` nothing runs before the
ServerApp, so this app does the same preparation first (write the embedded
synthetic dataset into an empty ``data-dir`` when ``synthesize-if-missing``,
then check the folder as a hospital would) and then hands over to the
coordinator. In a deployment ``data-dir`` is empty: nothing is prepared and
the coordinator runs as it is.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from server.server_app import main as coordinator
from shared_models.run_settings import RunSettings
from simulations.data_prep import prepare_data

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    prepare_data(RunSettings.from_config(context.run_config))
    coordinator(grid, context)
