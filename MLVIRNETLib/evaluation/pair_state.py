"""When a cohort pair counts as done, and the lock that keeps two runs off one pair.

Done
    A pair is done when its ``result.json`` parses, records the same inputs (absolute path, size
    and modification time of every file) and the same registration settings (model file with its
    size and modification time, every registration option) as the current run, and every output
    it lists exists. Size and modification time, not a hash: hashing every CT of a cohort at each
    resume would read gigabytes, while an edited, replaced or re-exported file changes its size or
    its modification time (the test ``make`` and ``rsync`` rely on). :func:`pair_status` says why a
    pair is not done, so the run can report it.

Lock
    :class:`PairLock` holds ``fcntl.flock`` on the pair's folder itself (no lock file is left
    behind) while a run works on the pair. The kernel releases it when the process ends, however it ends (``kill -9`` included), so
    a lock is never left held; a second run skips a locked pair and comes back to it at the end.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Any

def file_stamp(path: Path) -> dict[str, Any]:
    """``{"path": absolute, "size": bytes, "mtime_ns": ...}`` of a file (of every file below a folder)."""
    p = Path(path).absolute()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        stats = [f.stat() for f in files]
        return {"path": str(p), "size": sum(s.st_size for s in stats),
                "mtime_ns": max((s.st_mtime_ns for s in stats), default=0), "files": len(files)}
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def settings_record(options: Any, model: Any) -> dict[str, Any]:
    """The registration settings as ``result.json`` records them: every option and the model."""
    opts = json.loads(json.dumps(dataclasses.asdict(options), default=str))
    if model is None:
        model_doc: Any = None
    elif str(model) == "default":
        from ..paths import default_model_path

        path = default_model_path()
        model_doc = {"default": file_stamp(path) if path.is_file() else None}
    else:
        model_doc = file_stamp(Path(model))
    return {"options": opts, "model": model_doc}


def _differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(recorded, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(recorded) | set(current)):
            out += _differences(recorded.get(key), current.get(key), f"{prefix}{key}.")
        return out
    return [] if recorded == current else [prefix.rstrip(".")]


def pair_status(result_path: Path, inputs: dict[str, Any], settings: dict[str, Any]) -> tuple[bool, str | None]:
    """``(done, why not)`` of the pair whose ``result.json`` is ``result_path`` (module docstring).

    ``inputs`` maps column -> :func:`file_stamp` of the current manifest row; ``settings`` is
    :func:`settings_record` of the current run. ``why not`` is ``None`` when there is no
    ``result.json`` at all (the pair was never finished), else one sentence naming the file.
    """
    if not result_path.is_file():
        return False, None
    try:
        doc = json.loads(result_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return False, f"{result_path} is damaged ({type(exc).__name__}); registering the pair again"
    needed = ("seconds", "inputs", "settings", "outputs")
    if not isinstance(doc, dict) or any(k not in doc for k in needed):
        return False, f"{result_path} is incomplete (no {', '.join(k for k in needed if not isinstance(doc, dict) or k not in doc)}); registering the pair again"
    recorded_inputs = {k: {f: v.get(f) for f in ("path", "size", "mtime_ns")} if isinstance(v, dict) else v
                       for k, v in doc["inputs"].items()}
    current_inputs = {k: {f: v.get(f) for f in ("path", "size", "mtime_ns")} for k, v in inputs.items()}
    changed = _differences(recorded_inputs, current_inputs)
    if changed:
        names = sorted({c.split(".")[0] for c in changed})
        return False, f"{result_path}: the input(s) {', '.join(names)} changed since; registering the pair again"
    changed = _differences(doc["settings"], settings)
    if changed:
        shown = ", ".join(changed[:4]) + (", ..." if len(changed) > 4 else "")
        return False, f"{result_path}: the registration settings differ ({shown}); registering the pair again"
    gone = [name for name in doc["outputs"] if not (result_path.parent / name).is_file()]
    if gone:
        return False, f"{result_path}: its output(s) {', '.join(gone)} are missing; registering the pair again"
    return True, None


class PairLock:
    """An exclusive ``flock`` on ``folder`` (module docstring); use as ``with PairLock(folder) as got``.

    ``got`` is True when the lock is held; with ``wait=False`` it is False when another process
    holds it.
    """

    def __init__(self, folder: Path, wait: bool = False) -> None:
        self.path = Path(folder)
        self.wait = wait
        self._fd: int | None = None

    def __enter__(self) -> bool:
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if self.wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
