"""Benchmarks that measure napari-unet against the plain Keras way; `python -m benchmarks` runs them all."""
