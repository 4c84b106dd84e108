"""What a run records: the run log, metrics.csv and report.html; TensorBoard, W&B and MLflow; charts and plots."""
