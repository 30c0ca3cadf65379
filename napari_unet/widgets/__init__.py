"""napari dock widgets (Qt only; each a thin layer over napari_unet.core).

* `train_widget.TrainWidget`: pick image/labels pairs, train in the background, live curves and preview.
* `predict_widget.PredictWidget`: predict an image layer into a new Labels layer; re-apply post-processing.
* `finetune_widget.FinetuneWidget`: add corrected labels, fine-tune into a new version, compare, roll back.
* `models_registry`: the session's model list both widgets observe (Qt-free).

Nothing here imports TensorFlow at import time: the core's heavy modules load when work starts.
"""
