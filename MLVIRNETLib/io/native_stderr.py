"""Keep the C++ libraries' diagnostics out of a failed read's one-line error.

ITK's HDF5 prints its whole error stack (``HDF5-DIAG: Error detected in HDF5 ...``, a dozen lines)
and ITK and GDCM print ``WARNING: In .../itkGDCMSeriesFileNames.cxx ...`` straight to the
process's standard error (file descriptor 2) before the failure reaches Python, where the reader
turns it into one clear message. :func:`held_native_stderr` sends descriptor 2 to a temporary file
while a read runs: when the read succeeds, what was written is passed on to standard error after all
(a warning about a file that was read still reaches the user); when it fails, it is dropped.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

_FD = 2
_HELD = threading.RLock()
"""Serialises the redirection: two threads swapping descriptor 2 at once could leave it pointing at
a temporary file."""


def _flush_python_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):  # no stderr, or a closed one
        pass


@contextmanager
def held_native_stderr() -> Iterator[None]:
    """Run the block with file descriptor 2 sent to a temporary file.

    On a normal exit the captured bytes are written to descriptor 2; on an exception they are
    dropped, so that the caller's one-line error is all the user sees. Without a usable descriptor
    2 (a process started without one) the block runs unchanged.
    """
    with _HELD:
        try:
            saved = os.dup(_FD)
        except OSError:
            yield
            return
        try:
            with tempfile.TemporaryFile() as held:
                _flush_python_stderr()
                os.dup2(held.fileno(), _FD)
                ok = False
                try:
                    yield
                    ok = True
                finally:
                    _flush_python_stderr()
                    os.dup2(saved, _FD)
                    if ok:
                        held.seek(0)
                        data = memoryview(held.read())
                        while data:
                            data = data[os.write(_FD, data):]
        finally:
            os.close(saved)
