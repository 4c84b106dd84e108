"""Scoring a model against masks: metrics, which score ranks models (choice), boundary metrics, the scoring loop,
reports and the evaluate entry point."""
