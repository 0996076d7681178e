"""How PyTorch's CPU threads wait: sleep, not spin, when another job shares the cores.

PyTorch's CPU kernels run on an OpenMP team (GNU libgomp in the PyPI wheels). By default an idle
team thread spins for a while before it sleeps. Alone on a machine that saves microseconds per
kernel; next to another multithreaded job (a Slicer CLI module, an ITK filter, a second
registration) the spinning threads compete with that job's threads for the same cores, and each
barrier waits for the slowest thread, so a registration can take many times longer than the load
explains (``benchmarks/bench_load.py``; figures in docs/performance.md).

libgomp reads ``OMP_WAIT_POLICY`` once, when it is loaded (at ``import torch``). The command line
calls :func:`prefer_passive_waiting` before anything imports torch; a program that embeds the
library (Slicer) wraps its first ``import torch`` in :func:`passive_waiting_while_loading`, which
sets the variable only for that load. Nothing here changes a setting the user made.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

WAIT_POLICY_VARIABLE = "OMP_WAIT_POLICY"
PASSIVE = "PASSIVE"


def prefer_passive_waiting() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` for this process unless it is set already.

    Returns:
        True when the policy of this process's OpenMP threads is passive from now on: the variable
        was set here (or already said PASSIVE) and OpenMP was not loaded yet (torch not imported).
    """
    current = os.environ.get(WAIT_POLICY_VARIABLE)
    if current is None and "torch" not in sys.modules:
        os.environ[WAIT_POLICY_VARIABLE] = PASSIVE
        return True
    return current is not None and current.strip().upper() == PASSIVE and "torch" not in sys.modules


@contextlib.contextmanager
def passive_waiting_while_loading() -> Iterator[bool]:
    """Load torch's OpenMP runtime with the passive policy, leaving the environment as it was.

    For a program that embeds the library (Slicer): the variable is set only while the block runs
    (wrap the first ``import torch``), so that programs started later from the same process (a
    Slicer CLI module, pip) do not inherit it, while the OpenMP runtime loaded inside the block keeps
    the passive policy. Nothing changes when the user set the variable or torch is loaded already.

    Yields:
        True when the policy was set for this load.
    """
    before = os.environ.get(WAIT_POLICY_VARIABLE)
    changed = prefer_passive_waiting() and before is None
    try:
        yield changed
    finally:
        if changed:
            os.environ.pop(WAIT_POLICY_VARIABLE, None)
