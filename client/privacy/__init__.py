"""Privacy on the node: DP-SGD, per-sample clipping, the allowlist of what a DP node may send, SecAgg+."""
