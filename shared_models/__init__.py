"""What the coordinator and the hospital nodes share: models, the label taxonomy, audio features."""
