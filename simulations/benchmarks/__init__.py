"""Benchmarks: figures for the README and docs, run by hand from the repository root, never by the tests.

    python -m simulations.benchmarks.simulation_engine     what Flower's simulation engine costs
    python -m simulations.benchmarks.dp_cost               what DP-SGD costs in time, memory and accuracy
    python -m simulations.benchmarks.fairness_reweighting  the same federation without and with group reweighting

Research scratch, not product: pyproject.toml leaves this folder out of the
installed package, so a hospital or coordinator install carries none of it.
"""
