"""The coordinator: Flower ServerApp, strategy, aggregation, evaluation, run records."""
