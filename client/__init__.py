"""The hospital node: Flower ClientApp, local (DP) training, data loading."""
