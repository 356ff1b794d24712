"""The round loop and what watches it: divergence guard, metrics, console, interruption."""
