"""Sizing a training run to a time budget (``MLVIRNETLib.training.sizing``)."""

from __future__ import annotations

import math

import pytest
import yaml
from training_phantom import write_phantom

from MLVIRNETLib.training import load_config
from MLVIRNETLib.training.sizing import pair_rate, scaled_level_steps, write_sized_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("steps,total,expected", [
    ([500, 1000, 1500], 5511, [918, 1837, 2756]),  # model v4, stage 1, as sized on the H100
    ([0, 1000, 2000], 2576, [0, 859, 1717]),       # stage 2: a level without steps stays without
    ([1, 1, 2], 8, [2, 2, 4]),
    ([5, 5, 90], 10, [1, 1, 9]),                   # a level with steps keeps at least one
])
def test_level_steps_scale_in_proportion(steps, total, expected):
    assert scaled_level_steps(steps, total) == expected


@pytest.mark.parametrize("steps,total", [([0, 0, 0], 10), ([1, 2, 3], 0)])
def test_nothing_to_scale_is_refused(steps, total):
    with pytest.raises(ValueError, match="cannot scale"):
        scaled_level_steps(steps, total)


def _config_text(level_steps: str = "  level_steps: [2, 4]   # coarse -> fine\n") -> str:
    return ("# a comment that stays\nseed: 3\noutput_dir: run\n"
            "network: {levels: 2, features: 4, depth: 2, input_size: [16, 16, 16]}\n"
            "schedule:\n  steps: 6\n" + level_steps + "  data_workers: 0\n"
            "data:\n  train:\n    - kind: synthetic\n      images: [a.nii.gz]\n      masks: [a_mask.nii.gz]\n")


def test_the_sized_config_keeps_everything_but_the_steps(tmp_path):
    src = tmp_path / "c.yaml"
    src.write_text(_config_text())
    out = write_sized_config(src, 30)
    assert out == tmp_path / "c_sized.yaml"
    cfg = load_config(out)
    assert cfg.schedule.steps == 30 and cfg.schedule.level_steps == [10, 20]
    text = out.read_text()
    assert "# a comment that stays" in text and "# coarse -> fine" in text
    before, after = yaml.safe_load(src.read_text()), yaml.safe_load(text)
    before["schedule"].update(steps=30, level_steps=[10, 20])
    assert after == before


def test_a_config_without_level_steps_is_refused_and_nothing_is_written(tmp_path):
    src = tmp_path / "c.yaml"
    src.write_text(_config_text(level_steps=""))
    with pytest.raises(ValueError, match="level_steps"):
        write_sized_config(src, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


@pytest.mark.parametrize("workers", [0, 1])
def test_the_pair_rate_is_measured_with_the_data_of_the_config(tmp_path, workers):
    write_phantom(tmp_path, seed=0, name="a")
    src = tmp_path / "c.yaml"
    src.write_text(_config_text().replace("data_workers: 0", f"data_workers: {workers}"))
    rate = pair_rate(src, seconds=0.5)
    assert math.isfinite(rate) and 0.1 < rate < 1000
