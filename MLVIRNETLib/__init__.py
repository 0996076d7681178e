"""MLVIRNET: multilevel variational image registration network for lung CT."""

__version__ = "0.1.0"
