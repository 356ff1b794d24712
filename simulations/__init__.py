"""Research tooling: synthetic datasets, client partitioning, simulation and baseline runs."""
