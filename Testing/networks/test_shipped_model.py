"""The shipped default model: a safe, small file that registers real CT by itself."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.evaluation.metrics import jacobian_stats, tre
from MLVIRNETLib.io.images import read_image
from MLVIRNETLib.networks.model_files import load_model
from MLVIRNETLib.paths import bundled_ct_path, default_model_path
from MLVIRNETLib.preprocessing.lungmask import segment_lungs
from MLVIRNETLib.registration import RegistrationOptions, register
from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks
from MLVIRNETLib.training import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RECIPE = Path(__file__).resolve().parents[2] / "training_recipes" / "model_v6" / "config.yaml"
"""The training config of the shipped model (kept with its recipe, not shipped)."""


def test_the_file_is_small_safe_and_describes_its_training():
    """The shipped model file was made by its recipe's config, and it is the only model shipped."""
    path = default_model_path()
    assert path.is_file(), f"{path} is missing"
    assert sorted(p.name for p in path.parent.rglob("*.pt")) == [path.name]
    assert path.stat().st_size <= 10 * 1024 * 1024
    net, info = load_model(path)  # weights_only=True inside
    meta = info["metadata"]
    shipped = load_config(RECIPE).to_dict(file_names_only=True)
    trained = meta["training"]
    for key in ("num_threads", "data_workers"):  # how the run used the machine, not part of the model
        trained["schedule"].pop(key, None)
        shipped["schedule"].pop(key)
    for key in ("network", "seed"):
        assert trained[key] == shipped[key], key  # the file was made by the recipe's config
    defaults = {"init_model": None, "truth": 0.0, "identity": 0.0}  # keys added after the file was written
    for section in ("schedule", "loss"):
        for key, value in shipped[section].items():
            if section == "schedule" and key == "init_model":
                continue  # the recipe names the parent by its fetched file, parent.pt
            assert trained[section].get(key, defaults.get(key)) == value, f"{section}.{key}"
    assert meta["steps"] == sum(shipped["schedule"]["level_steps"])
    assert info["config"].to_dict() == load_config(RECIPE).network.to_dict()
    assert {"error_mm", "initial_error_mm", "dice", "folding_percent"} <= set(meta["validation"])
    # it names its data files but holds no path of the machine that trained it
    assert [f for src in trained["data"]["train"] for f in src["images"]] == \
        [f for src in shipped["data"]["train"] for f in src["images"]]
    strings = _strings(meta)
    assert not [s for s in strings if "/" in s or "\\" in s], "absolute or relative paths in the metadata"
    assert net.num_levels == 3


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def _model_only(image: sitk.Image, peak_mm: float, seed: int = 4):
    lungs = segment_lungs(image)
    grid = ImageGrid.from_sitk(image)
    truth = breathing_deformation(grid, lungs, peak_mm=peak_mm, seed=seed)
    moving, _ = make_synthetic_pair(image, truth, lungs, noise_hu=10.0, seed=seed)
    pts = sample_landmarks(image, lungs, n=60, seed=seed)
    targets = truth.map_points(torch.as_tensor(pts, dtype=torch.float32))[0].double().numpy()
    result = register(image, moving, lungs, model="default", device="cpu",
                      options=RegistrationOptions(refinement={"iterations": 0}))
    lung = torch.as_tensor(sitk.GetArrayFromImage(lungs) > 0)
    return tre(pts, targets), tre(pts, targets, result.deformation), jacobian_stats(result.deformation, lung), result


def test_model_alone_registers_the_bundled_ct():
    before, after, jac, result = _model_only(read_image(bundled_ct_path()), 15.0)
    assert result.model_used == str(default_model_path())
    assert after.mean < 0.6 * before.mean
    assert jac["folding_percent"] < 0.5


def test_model_alone_on_a_held_out_ct(shared_data):
    """A CT of a patient the model never saw, 20 mm breathing."""
    image = read_image(shared_data / "chest_ct" / "lungct_0103_0005.nii.gz")
    before, after, jac, _ = _model_only(image, 20.0)
    assert after.mean < 0.6 * before.mean
    assert jac["folding_percent"] < 0.5
    assert np.isfinite(after.mean)


def test_the_shipped_model_keeps_the_levels_its_recipe_did_not_train(tmp_path):
    """The recipe trains the finest level of its parent only (level_steps [0, 0, n]): the coarsest
    and middle levels, batch-norm statistics included, are the parent's to the bit (the parent
    fetched from the lineage tag, sha256 checked); the finest differs."""
    recipes = RECIPE.parents[1]
    if shutil.which("git") is None or subprocess.run(
        ["git", "-C", str(recipes), "rev-parse", "-q", "--verify", "refs/tags/models-lineage-v1-v5"],
        capture_output=True,
    ).returncode != 0:
        pytest.skip("the git tag models-lineage-v1-v5 is not in this clone (git fetch origin tag models-lineage-v1-v5)")
    assert list(load_config(RECIPE).schedule.level_steps[:2]) == [0, 0]
    parent = tmp_path / "parent.pt"
    subprocess.run(["bash", str(recipes / "common" / "fetch_parent.sh"), "v5", str(parent)], check=True, capture_output=True)
    new, _ = load_model(default_model_path())
    old, _ = load_model(parent)
    for level in range(3):
        a, b = old.nets[level].state_dict(), new.nets[level].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a) == (level in (1, 2)), level  # nets[0] is the finest level
