"""Tests of MLVIRNETLib.training.config: YAML loading, path resolution, one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from MLVIRNETLib.training.config import TrainConfig, config_from_dict, load_config


def _base() -> dict:
    return {
        "seed": 1,
        "output_dir": "out",
        "network": {"levels": 2, "features": 4, "depth": 2, "input_size": [16, 16, 16]},
        "schedule": {"steps": 10},
        "data": {
            "train": [{"kind": "synthetic", "images": ["a.nii.gz"]},
                      {"kind": "phases", "images": ["p1.nii.gz", "p2.nii.gz"], "weight": 0.5}],
            "validation": [{"kind": "manifest", "csv": "sub/pairs.csv"}],
        },
    }


def _write(tmp_path: Path, d: dict) -> Path:
    path = tmp_path / "cfg" / "train.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(d))
    return path


def test_load_resolves_paths_relative_to_the_config_file(tmp_path):
    cfg = load_config(_write(tmp_path, _base()))
    base = (tmp_path / "cfg").resolve()
    assert cfg.output_dir == str(base / "out")
    assert cfg.data.train[0].images == [str(base / "a.nii.gz")]
    assert cfg.data.validation[0].csv == str(base / "sub" / "pairs.csv")
    assert cfg.network.input_size == (16, 16, 16)
    assert cfg.schedule.steps_per_level(2) == [5, 5]


def test_to_dict_round_trip_is_plain_and_equal(tmp_path):
    cfg = load_config(_write(tmp_path, _base()))
    d = cfg.to_dict()
    assert yaml.safe_load(yaml.safe_dump(d)) == d  # plain values only
    again = config_from_dict(d)
    assert again.to_dict() == d


def test_file_names_only_drops_the_machine_paths(tmp_path):
    cfg = load_config(_write(tmp_path, _base()))
    d = cfg.to_dict(file_names_only=True)
    assert d["data"]["train"][0]["images"] == ["a.nii.gz"]
    assert d["data"]["train"][1]["images"] == ["p1.nii.gz", "p2.nii.gz"]
    assert d["data"]["validation"][0]["csv"] == "pairs.csv"
    assert d["output_dir"] == "out"
    assert str(tmp_path) not in yaml.safe_dump(d)
    assert cfg.data.train[0].images == [str((tmp_path / "cfg" / "a.nii.gz").resolve())]  # the config is unchanged
    full = cfg.to_dict()
    for key in ("network", "schedule", "loss", "seed"):
        assert d[key] == full[key]


def test_appearance_and_init_model_load_and_travel_as_names(tmp_path):
    d = _base()
    d["schedule"]["init_model"] = "../models/v1.pt"
    d["data"]["train"][0]["appearance"] = {"thick_slice_probability": 0.3, "slice_thickness_mm": [2.5, 8]}
    d["data"]["train"][0]["motion"] = {"sliding_mm": [2, 6], "identical_probability": 0.1}
    cfg = load_config(_write(tmp_path, d))
    assert cfg.schedule.init_model == str((tmp_path / "models" / "v1.pt").resolve())
    src = cfg.data.train[0]
    assert src.appearance.thick_slice_probability == 0.3 and src.appearance.slice_thickness_mm == (2.5, 8.0)
    assert src.appearance.enabled and not cfg.data.train[1].appearance.enabled
    assert src.motion.sliding_mm == (2.0, 6.0) and src.motion.identical_probability == 0.1
    assert cfg.to_dict(file_names_only=True)["schedule"]["init_model"] == "v1.pt"
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


def test_equal_split_gives_the_remainder_to_the_coarse_levels():
    d = _base()
    d["network"]["levels"] = 3
    d["network"]["input_size"] = [32, 32, 32]
    d["schedule"] = {"steps": 11}
    assert config_from_dict(d).schedule.steps_per_level(3) == [4, 4, 3]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(sedd=3), "sedd"),
        (lambda d: d["schedule"].update(stepz=3), "stepz"),
        (lambda d: d["schedule"].update(steps=0), "schedule.steps"),
        (lambda d: d["schedule"].update(level_steps=[1, 2, 3]), "level_steps"),
        (lambda d: d["schedule"].update(learning_rate=-1), "learning_rate"),
        (lambda d: d["data"]["train"][0].update(kind="video"), "kind"),
        (lambda d: d["data"]["train"][0].update(images=[]), "images"),
        (lambda d: d["data"]["train"][1].update(images=["one.nii.gz"]), "at least 2"),
        (lambda d: d["data"]["train"][0].update(masks=["m1", "m2"]), "masks"),
        (lambda d: d["data"]["train"][0].update(motion={"peak_mm": [30, 10]}), "peak_mm"),
        (lambda d: d["data"]["train"][0].update(motion={"identical_probability": 2}), "identical_probability"),
        (lambda d: d["data"]["train"][0].update(appearance={"low_dose_probability": -0.1}), "low_dose_probability"),
        (lambda d: d["data"]["train"][0].update(appearance={"thick_slices": 0.5}), "thick_slices"),
        (lambda d: d["schedule"].update(init_model=""), "init_model"),
        (lambda d: d["schedule"].update(data_workers=-1), "schedule.data_workers"),
        (lambda d: d["data"]["validation"][0].update(register_landmarks=20), "register_landmarks needs a 'synthetic'"),
        (lambda d: d["data"]["train"][0].update(register_landmarks=-3), "register_landmarks"),
        (lambda d: d["schedule"].update(data_workers=1.5), "schedule.data_workers"),
        (lambda d: d["data"].update(train=[]), "data.train"),
        (lambda d: d["network"].update(input_size=[18, 16, 16]), "divisible"),
        (lambda d: d["loss"] if False else d.update(loss={"alpha": -1}), "alpha"),
        (lambda d: d.pop("data"), "data"),
    ],
)
def test_bad_config_gives_one_error_naming_the_problem(tmp_path, change, message):
    d = _base()
    change(d)
    with pytest.raises(ValueError, match=message) as info:
        load_config(_write(tmp_path, d))
    assert "train.yaml" in str(info.value)


def test_missing_and_non_yaml_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)


def test_the_shipped_models_recipe_loads():
    cfg = load_config(Path(__file__).resolve().parents[2] / "training_recipes" / "model_v6" / "config.yaml")
    assert isinstance(cfg, TrainConfig)
    assert cfg.network.levels == 3 and cfg.schedule.warm_start
