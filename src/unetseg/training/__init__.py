"""Training: the loop, its state, optimiser and schedule, losses, EMA, signals, the plan, folds, console summary."""
