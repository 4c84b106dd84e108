"""Running a trained model on images.

The segmenter (unetseg.load), the batched file pipeline, file handling, ONNX Runtime, tiling and TTA.
"""
