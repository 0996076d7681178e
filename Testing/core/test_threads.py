"""core.threads: the OpenMP wait policy is set before torch loads, and a user's choice is kept."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from MLVIRNETLib.core.threads import prefer_passive_waiting
{before}
print(prefer_passive_waiting(), os.environ.get("OMP_WAIT_POLICY"))
"""


def _probe(env_policy: str | None, import_torch_first: bool = False) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_policy is not None:
        env["OMP_WAIT_POLICY"] = env_policy
    code = _PROBE.format(root=str(ROOT), before="import torch" if import_torch_first else "")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    return out.stdout.strip()


@pytest.mark.parametrize("policy,torch_first,expected", [
    (None, False, "True PASSIVE"),       # set here, before OpenMP is loaded
    ("ACTIVE", False, "False ACTIVE"),   # the user's choice stays
    ("passive", False, "True passive"),
    (None, True, "False None"),          # too late: torch (and OpenMP) already loaded
])
def test_prefer_passive_waiting(policy, torch_first, expected) -> None:
    assert _probe(policy, torch_first) == expected


def test_the_command_line_sets_it_before_torch_loads(tmp_path) -> None:
    """Importing the CLI changes nothing; running a command sets PASSIVE (torch is not loaded yet)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = (
        "import os, sys; sys.path.insert(0, {root!r}); from MLVIRNETLib.cli import main; "
        "before = os.environ.get('OMP_WAIT_POLICY'); "
        "rc = main(['register', {missing!r}, {missing!r}, '-o', {out!r}, '--quiet']); "
        "print(before, rc, os.environ.get('OMP_WAIT_POLICY'))"
    ).format(root=str(ROOT), missing=str(tmp_path / "missing.nii.gz"), out=str(tmp_path / "field.nii.gz"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "None 2 PASSIVE"
