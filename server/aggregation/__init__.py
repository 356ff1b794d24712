"""How updates become a model: the strategy, update screening, robust aggregation rules."""
