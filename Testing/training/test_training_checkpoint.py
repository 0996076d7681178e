"""Tests of MLVIRNETLib.training.checkpoint: atomic writes and safe loading."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from MLVIRNETLib.training.checkpoint import load_checkpoint, save_checkpoint


def _payload() -> dict:
    return {"config": {"seed": 1}, "step": 7, "stage": 1, "optimizer_stage": 1, "elapsed_s": 2.5,
            "model": {"w": torch.arange(6.0)}, "optimizer": {"state": {}, "param_groups": []}}


def test_round_trip_and_sidecar(tmp_path):
    path = save_checkpoint(tmp_path / "c" / "last.pt", _payload())
    back = load_checkpoint(path)
    assert back["step"] == 7 and torch.equal(back["model"]["w"], torch.arange(6.0))
    assert json.loads((tmp_path / "c" / "last.json").read_text())["step"] == 7
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["last.json", "last.pt"]  # no temp files


def test_truncated_file(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _payload())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_checkpoint(path)


class _Evil:
    def __reduce__(self):
        import os

        return (os.mkdir, (str(_Evil.target),))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the test writes a foreign pickle on purpose
def test_foreign_pickle_is_refused_without_running_code(tmp_path):
    _Evil.target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with path.open("wb") as fh:
        pickle.dump({"format": "mlvirnet-checkpoint", "x": _Evil()}, fh)
    with pytest.raises(ValueError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_other_torch_files_and_missing_file(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="not an MLVIRNET training checkpoint"):
        load_checkpoint(path)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
