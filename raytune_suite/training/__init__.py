"""The PyTorch side: data, models, training loop, checkpoints. Importable without Ray."""
