"""Running a federation on one machine: Flower's engine and the local backend."""
