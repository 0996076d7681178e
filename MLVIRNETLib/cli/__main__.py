"""``python -m MLVIRNETLib.cli`` (used with ``torchrun`` for multi-GPU training)."""

import sys

from . import main

sys.exit(main())
