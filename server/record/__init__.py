"""What a run keeps: the run record, per-round records, checkpoints, the run lock."""
