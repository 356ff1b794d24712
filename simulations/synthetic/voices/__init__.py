"""Synthetic speech: cues (what emotion moves), population (speakers), synthesis (a take), writers (layouts)."""
