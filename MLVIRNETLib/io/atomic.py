"""Atomic file output: write to a temporary folder beside the target, check, then rename into place.

Guarantees of :func:`atomic_output` (and :func:`write_atomically`):

* the final path either keeps its earlier content or receives the complete new file, never a
  partial one: before the rename every file is flushed to disk (``fsync``) and, where a check is
  given, read back (see :mod:`MLVIRNETLib.io.integrity`);
* every error names the user's path, never the hidden temporary one;
* a process killed while writing (``SIGKILL``, or ``SIGTERM`` without a handler) leaves its hidden
  temporary folder ``.NAME.mlvirnet-PID-HOST.XXXX.tmp``; the next write into the same folder
  removes it once that process is gone (or after a day, whatever the process).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from .integrity import IncompleteWriteError

PathLike = str | os.PathLike

_HOST = hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:8]
_OURS = re.compile(r"^\..+\.mlvirnet-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})\.[A-Za-z0-9_]+\.tmp$")
_LEGACY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # folders of versions before the PID was recorded
STALE_AFTER_S = 24 * 3600.0
"""A temporary folder of a process that may still run (other host, or PID reused) is stale after this."""
LEGACY_STALE_AFTER_S = 3600.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _is_stale(entry: os.DirEntry, now: float) -> bool:
    age = now - entry.stat(follow_symlinks=False).st_mtime
    match = _OURS.match(entry.name)
    if match is not None:
        if age > STALE_AFTER_S:
            return True
        return match["host"] == _HOST and int(match["pid"]) != os.getpid() and not _pid_alive(int(match["pid"]))
    return _LEGACY.match(entry.name) is not None and age > LEGACY_STALE_AFTER_S


def remove_stale_temporaries(folder: PathLike) -> list[Path]:
    """Remove the hidden temporary folders that killed writers left in ``folder``; returns those removed.

    Only folders named by :func:`atomic_output` and holding only plain files are touched, and only
    when their process is gone (same host), or they are older than :data:`STALE_AFTER_S`. Folders
    of the older naming without a PID (``.NAME.XXXXXXXX.tmp``) go after :data:`LEGACY_STALE_AFTER_S`.
    Problems (permissions, a concurrent removal) are ignored: this is housekeeping.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = [e for e in os.scandir(folder) if e.name.startswith(".") and e.name.endswith(".tmp")]
    except OSError:
        return removed
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or not _is_stale(entry, now):
                continue
            if any(child.is_dir(follow_symlinks=False) for child in os.scandir(entry.path)):
                continue  # not a folder we would have made
            shutil.rmtree(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _describe_os_error(exc: OSError, target: Path, folder: Path, creating: bool = False) -> OSError:
    """The same kind of ``OSError`` as ``exc``, but naming ``target`` and saying what is wrong."""
    code = exc.errno
    reason = exc.strerror or str(exc)
    if creating and code == errno.ENOENT and folder.is_dir():
        reason = f"the file system of {folder} does not allow creating files (a virtual file system such as /proc?)"
    elif code in (errno.EACCES, errno.EPERM):
        reason = f"permission denied: cannot create files in {folder}"
    elif code == errno.EROFS:
        reason = f"{folder} is on a read-only file system"
    elif code == errno.ENOSPC:
        reason = "no space left on the device"
    cls = type(exc) if type(exc) is not IncompleteWriteError else OSError
    message = f"cannot write {target}: {reason}"
    try:
        return cls(code, message) if code is not None else cls(message)
    except TypeError:
        return OSError(code, message)


def _scrub(exc: BaseException, tmpdir: Path, target: Path, folder: Path) -> BaseException | None:
    """A copy of ``exc`` whose message names ``target`` instead of the temporary path, or ``None`` to keep it."""
    if isinstance(exc, OSError) and not isinstance(exc, IncompleteWriteError):
        names = " ".join(str(n) for n in (exc.filename, exc.filename2) if n is not None)
        if names and str(tmpdir) not in names:
            return None  # about some other file: keep it as it is
        if exc.errno is None:  # a message of our own writers: keep it, without the temporary path
            return type(exc)(_scrubbed_text(exc, tmpdir, target, folder))
        return _describe_os_error(exc, target, folder)
    text = str(exc)
    if str(tmpdir) not in text or not isinstance(exc, (ValueError, RuntimeError)):
        return None
    text = text.replace(str(tmpdir / target.name), str(target)).replace(str(tmpdir), str(folder))
    try:
        return type(exc)(text)
    except TypeError:
        return RuntimeError(text)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: PathLike, verify: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path with the same file name as ``path``; publish it only when complete.

    The temporary path lives in a hidden sub-folder of ``path``'s folder (same file system), so
    writers that choose their format from the suffix behave as for ``path``, and formats that
    write companion files (``.mhd`` + ``.raw``) keep consistent names. When the ``with`` block
    finishes, every file written there is flushed to disk (``fsync``), ``verify(tmp_path, path)``
    (if given) checks the result, and then the files are moved into place with ``os.replace``
    (the header or main file last). When anything fails, the temporary folder is deleted and
    ``path`` keeps its earlier content (or stays absent). A kill leaves the temporary folder
    behind; the next write into the same folder removes it (:func:`remove_stale_temporaries`).

    Args:
        path: the final path.
        verify: ``verify(written_file, final_path)`` raises ``ValueError`` or ``OSError`` when
            the written file is incomplete; its message should name ``final_path``.

    Raises:
        FileNotFoundError: the folder of ``path`` does not exist.
        IsADirectoryError: ``path`` is a folder.
        OSError: the folder does not accept files (read-only, permissions, /proc), or a write failed;
            :class:`~MLVIRNETLib.io.integrity.IncompleteWriteError` when ``verify`` found the file
            incomplete (usually a full disk). Messages name ``path``, never the temporary path.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {folder}")
    if target.is_dir():
        raise IsADirectoryError(f"output path {target} is a folder; give a file name inside it")
    remove_stale_temporaries(folder)
    try:
        prefix = f".{target.name}.mlvirnet-{os.getpid()}-{_HOST}."
        tmpdir = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder))
    except OSError as exc:
        raise _describe_os_error(exc, target, folder, creating=True) from None
    try:
        tmp_path = tmpdir / target.name
        try:
            yield tmp_path
            if not tmp_path.exists():
                raise RuntimeError(f"writer produced no file for {target}")
            written = sorted(tmpdir.iterdir())
            for item in written:
                _fsync(item)
            if verify is not None:
                try:
                    verify(tmp_path, target)
                except (ValueError, OSError) as exc:
                    detail = _scrubbed_text(exc, tmpdir, target, folder)
                    kept = "the earlier file was kept" if target.exists() else "nothing was written"
                    raise IncompleteWriteError(
                        f"cannot write {target}: the written file is incomplete or damaged ({detail}); "
                        f"is the disk full? ({kept})"
                    ) from None
            # companions first, the named file last: readers never see a header without its data
            for extra in (p for p in written if p.name != target.name):
                os.replace(extra, folder / extra.name)
            os.replace(tmp_path, target)
        except (OSError, ValueError, RuntimeError) as exc:
            better = _scrub(exc, tmpdir, target, folder)
            if better is None:
                raise
            raise better from None
        with contextlib.suppress(OSError):  # durability of the rename; not every file system allows it
            _fsync(folder)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _scrubbed_text(exc: BaseException, tmpdir: Path, target: Path, folder: Path) -> str:
    return str(exc).replace(str(tmpdir / target.name), str(target)).replace(str(tmpdir), str(folder))


def write_atomically(path: PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(file)`` on a new binary file and publish it as ``path`` only when it succeeded.

    The file is flushed and fsynced before the rename (see :func:`atomic_output`): an error, a full
    disk or a kill never leaves a partial file at ``path``, and an earlier file there survives.
    A kill may leave a hidden temporary folder beside ``path``; the next write into that folder
    removes it.

    Raises:
        FileNotFoundError: the output folder does not exist.
        OSError: the file could not be written (full disk, read-only folder, ...), naming ``path``.
    """
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


@contextlib.contextmanager
def atomic_outputs(paths: list[PathLike]) -> Iterator[list[Path]]:
    """Yield one temporary path per target of ``paths``; publish them all only when every one is written.

    The outputs of one command are then all new or all as before: a failure while any of them is
    written (a full disk between the first and the last) removes every temporary and leaves every
    target as it was. The writers may themselves write atomically into the temporary paths
    (:func:`atomic_output`, with its checks). Temporaries are hidden folders named as those of
    :func:`atomic_output`, so a killed run's are removed by :func:`remove_stale_temporaries`.

    Raises:
        FileNotFoundError: a target's folder does not exist.
        OSError, ValueError, RuntimeError: of the writers, naming the targets, not the temporaries.
    """
    targets = [Path(p) for p in paths]
    tmpdirs: list[Path] = []
    try:
        for target in targets:
            folder = target.parent if str(target.parent) else Path(".")
            if not folder.is_dir():
                raise FileNotFoundError(f"output folder does not exist: {folder}")
            try:
                prefix = f".{target.name}.mlvirnet-{os.getpid()}-{_HOST}."
                tmpdirs.append(Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=folder)))
            except OSError as exc:
                raise _describe_os_error(exc, target, folder, creating=True) from None
        try:
            yield [d / t.name for d, t in zip(tmpdirs, targets)]
        except (OSError, ValueError, RuntimeError) as exc:
            for d, t in zip(tmpdirs, targets):
                better = _scrub(exc, d, t, t.parent)
                if better is not None:
                    raise better from None
            raise
        for d, t in zip(tmpdirs, targets):
            if not (d / t.name).exists():
                raise RuntimeError(f"writer produced no file for {t}")
        for d, t in zip(tmpdirs, targets):  # every file is complete: publish them together
            for extra in (p for p in d.iterdir() if p.name != t.name):
                os.replace(extra, t.parent / extra.name)
            os.replace(d / t.name, t)
    finally:
        for d in tmpdirs:
            shutil.rmtree(d, ignore_errors=True)


def same_file(a: Path, b: Path) -> bool:
    """True when ``a`` and ``b`` name the same file (the same inode when both exist, else the same
    resolved path): the check that keeps an output from overwriting an input."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()
