"""Privacy at the coordinator: client-level central DP and SecAgg+."""
