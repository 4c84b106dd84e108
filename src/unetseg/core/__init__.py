"""Shared plumbing every other part uses: checkpoints, device and precision, distributed processes, atomic writes."""
