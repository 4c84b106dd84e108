"""What a run records: the run log and metrics.csv, report.html, TensorBoard, W&B and MLflow backends, charts and plots."""
