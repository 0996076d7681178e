"""Progressive training of mlVIRNET: configuration, data sources, the training loop, checkpoints.

Modules: ``config`` (the YAML schema), ``pairs`` (training pairs; 4D-CT phase and CSV manifest
sources), ``synthetic_pairs`` (self-supervised pairs from single CTs), ``appearance`` (acquisition
differences between the two scans of a synthetic pair), ``trainer``, ``validation``,
``checkpoint``, ``run_log``, ``sizing`` (a run sized to a time budget from the measured rate of its
pairs) and ``data_copies`` (smaller copies of training CTs, for machines that receive little data).

Entry points: :func:`~MLVIRNETLib.training.config.load_config` and
:func:`~MLVIRNETLib.training.trainer.train` (the ``mlvirnet train`` command).
"""

from .config import TrainConfig, config_from_dict, load_config
from .trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "config_from_dict", "load_config", "train"]
