"""Datasets on disk and in memory.

Folders and pairing, the scan index, checks and doctor, class map and classes file, the decoded cache, samples,
sampler and augmentation.
"""
