"""The mlVIRNET networks and their files.

Holds:
    unet         the per-level U-Net (3 resolution levels, 16 filters doubling).
    cascade      the multilevel cascade (Algorithm 1 of the paper), its config and level tools.
    model_files  safe model files (``weights_only=True``) with their metadata.

May import: :mod:`MLVIRNETLib.core`, :mod:`MLVIRNETLib.io` (atomic writes).
"""

from .cascade import MultilevelNet, MultilevelOutput, NetworkConfig, build_network, symmetric_correction
from .model_files import load_model, save_model
from .unet import UNet3D

__all__ = ["MultilevelNet", "MultilevelOutput", "NetworkConfig", "UNet3D", "build_network", "load_model", "save_model",
           "symmetric_correction"]
