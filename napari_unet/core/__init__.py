"""Qt-free core: configuration, targets, data, models, training, prediction, model files, CLI."""
