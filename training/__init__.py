"""Vigil's machine-learning library: preprocessing, autoencoders, training, thresholds, artifacts."""
