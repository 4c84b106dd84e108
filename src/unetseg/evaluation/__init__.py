"""Scoring a model against masks: metrics, boundary metrics, the scoring loop, reports and the evaluate entry point."""
