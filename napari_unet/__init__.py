"""napari-unet: train, predict, correct and fine-tune U-Nets inside napari.

Nothing here imports TensorFlow or Qt: napari imports plugin packages while it starts,
so heavy libraries are loaded lazily when work begins.
"""

import os

__version__ = "0.1.0"

# Our models are Keras on TensorFlow, in every process that runs them (the compute worker, the CLI,
# dask workers, which inherit the environment). bioimageio.core otherwise sets KERAS_BACKEND to its
# own default, "torch", as soon as it is imported, and every later Keras import would fail.
os.environ["KERAS_BACKEND"] = "tensorflow"
