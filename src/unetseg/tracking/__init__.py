"""What a run records: the run log and metrics.csv, TensorBoard and W&B backends, plots."""
