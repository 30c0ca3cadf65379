"""napari-unet: train, predict, correct and fine-tune U-Nets inside napari.

Nothing here imports TensorFlow or Qt: napari imports plugin packages while it starts,
so heavy libraries are loaded lazily when work begins.
"""

__version__ = "0.1.0"
