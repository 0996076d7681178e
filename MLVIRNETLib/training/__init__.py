"""Progressive training of mlVIRNET: configuration, data sources, the training loop, checkpoints.

Entry points: :func:`~MLVIRNETLib.training.config.load_config` and
:func:`~MLVIRNETLib.training.trainer.train` (the ``mlvirnet train`` command).
"""

from .config import TrainConfig, config_from_dict, load_config
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "config_from_dict", "load_config", "train"]
