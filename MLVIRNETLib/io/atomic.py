"""Atomic file output: write to a temporary file beside the target, then rename it into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------
# Atomic output
# ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_output(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path with the same file name as ``path``; publish it only on success.

    The temporary path lives in a hidden sub-folder of ``path``'s folder (same file system), so
    writers that choose their format from the suffix behave as for ``path``, and formats that
    write companion files (``.mhd`` + ``.raw``) keep consistent names. When the ``with`` block
    finishes, every file written there is moved into place with ``os.replace`` (the header or main
    file last); when it raises, everything is deleted and ``path`` is left untouched.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder))
    try:
        tmp_path = tmpdir / target.name
        yield tmp_path
        if not tmp_path.exists():
            raise RuntimeError(f"writer produced no file for {target}")
        # companions first, the named file last: readers never see a header without its data
        for extra in sorted(p for p in tmpdir.iterdir() if p.name != target.name):
            os.replace(extra, folder / extra.name)
        os.replace(tmp_path, target)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a new binary file and publish it as ``path`` only when it succeeded
    (flushed and fsynced; see :func:`atomic_output`): a kill or an error never leaves a partial file."""
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)

