"""Vigil, the anomaly-detection monitoring daemon."""

__version__ = "0.1.0"
