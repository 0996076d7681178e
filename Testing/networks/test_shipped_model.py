"""The shipped default model: a safe, small file that registers real CT by itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.evaluation.metrics import jacobian_stats, tre
from MLVIRNETLib.io.images import read_image
from MLVIRNETLib.networks.model_files import load_model
from MLVIRNETLib.paths import bundled_ct_path, default_model_path, resource_path
from MLVIRNETLib.preprocessing.lungmask import segment_lungs
from MLVIRNETLib.registration import RegistrationOptions, register
from MLVIRNETLib.simulation.breathing import breathing_deformation, make_synthetic_pair, sample_landmarks
from MLVIRNETLib.training import load_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("folder", ["", "v5", "v4", "v3", "v2", "v1"])
def test_the_file_is_small_safe_and_describes_its_training(folder):
    """The shipped model file (v6) was made by the config shipped beside it, and so were model v5,
    which v6 starts from, model v4 (by its second stage), which v5 starts from, model v3, which
    v4's first stage starts from, model v2, which v3 starts from, and model v1, which v2 starts from."""
    model, config = f"{folder}/mlvirnet_default.pt".lstrip("/"), f"{folder}/mlvirnet_default.yaml".lstrip("/")
    path = resource_path("Models", model)
    assert path.is_file(), f"Resources/Models/{model} is missing"
    assert path.stat().st_size <= 10 * 1024 * 1024
    net, info = load_model(path)  # weights_only=True inside
    meta = info["metadata"]
    shipped = load_config(resource_path("Models", config)).to_dict(file_names_only=True)
    trained = meta["training"]
    for key in ("num_threads", "data_workers"):  # how the run used the machine, not part of the model
        trained["schedule"].pop(key, None)
        shipped["schedule"].pop(key)
    for key in ("network", "seed"):
        assert trained[key] == shipped[key], key  # the file was made by the shipped config
    defaults = {"init_model": None, "truth": 0.0, "identity": 0.0}  # keys added after the file was written
    for section in ("schedule", "loss"):
        for key, value in shipped[section].items():
            assert trained[section].get(key, defaults.get(key)) == value, f"{section}.{key}"
    assert meta["steps"] == sum(shipped["schedule"]["level_steps"])
    assert info["config"].to_dict() == load_config(resource_path("Models", config)).network.to_dict()
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
                      options=RegistrationOptions(refine_iterations=0))
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


@pytest.mark.parametrize(
    "newer,older,kept",
    [("v2", "v1", (1, 2)), ("v3", "v2", (2,)), ("v4", "v3", ()), ("v5", "v4", (2,)), ("", "v5", (1, 2))],
)
def test_each_model_keeps_the_levels_its_config_did_not_train(newer, older, kept):
    """Model v2 trained only the finest level of v1 (level_steps [0, 0, 480]); model v3 the middle
    and finest levels of v2 ([0, 300, 200]); model v4 every level of v3 (its first stage); model v5
    the middle and finest levels of v4 ([0, 3132, 4698]); model v6 the finest level of v5
    ([0, 0, 4568]). The levels left alone, batch-norm
    statistics included, are the older model's to the bit; the trained ones differ."""
    new, _ = load_model(resource_path("Models", *filter(None, [newer]), "mlvirnet_default.pt"))
    old, _ = load_model(resource_path("Models", older, "mlvirnet_default.pt"))
    for level in range(3):
        a, b = old.nets[level].state_dict(), new.nets[level].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a) == (level in kept), level


def test_the_two_stages_of_model_v4_chain_up():
    """Model v4's config (stage 2) starts from the model that stage 1 writes, stage 1 from model v3,
    and stage 1 trains every level (so none of v3's is kept, as the test above checks)."""
    root = Path(__file__).resolve().parents[2]
    stage1 = load_config(root / "benchmarks" / "model_v4" / "stage1.yaml")
    stage2 = load_config(resource_path("Models", "v4", "mlvirnet_default.yaml"))
    assert Path(stage2.schedule.init_model) == Path(stage1.output_dir) / "model.pt"
    assert Path(stage1.schedule.init_model) == resource_path("Models", "v3", "mlvirnet_default.pt").resolve()
    assert all(n > 0 for n in stage1.schedule.level_steps)
    assert stage2.schedule.level_steps[0] == 0
    # the same data, network and loss in both stages
    assert stage1.to_dict()["data"] == stage2.to_dict()["data"]
    assert stage1.network == stage2.network and stage1.loss == stage2.loss


def test_model_v5_continues_model_v4_on_the_same_data():
    """Model v5's config starts from the shipped v4 file, leaves the coarsest level alone, and
    trains with v4's data, network and loss."""
    v5 = load_config(resource_path("Models", "v5", "mlvirnet_default.yaml"))
    v4 = load_config(resource_path("Models", "v4", "mlvirnet_default.yaml"))
    assert Path(v5.schedule.init_model) == resource_path("Models", "v4", "mlvirnet_default.pt").resolve()
    assert v5.schedule.level_steps[0] == 0 and all(n > 0 for n in v5.schedule.level_steps[1:])
    assert v5.to_dict()["data"] == v4.to_dict()["data"]
    assert v5.network == v4.network and v5.loss == v4.loss
    assert v5.seed != v4.seed


def test_model_v6_adds_the_supervised_term_to_model_v5():
    """The shipped config (model v6) starts from the v5 file and trains its finest level only, with
    v5's network, CTs and appearance, eq. (2) with v5's weights plus the supervised term, and a
    larger share of identical pairs; nothing else in the data changes."""
    v6 = load_config(resource_path("Models", "mlvirnet_default.yaml"))
    v5 = load_config(resource_path("Models", "v5", "mlvirnet_default.yaml"))
    assert Path(v6.schedule.init_model) == resource_path("Models", "v5", "mlvirnet_default.pt").resolve()
    assert list(v6.schedule.level_steps[:2]) == [0, 0] and v6.schedule.level_steps[2] > 0
    assert v6.network == v5.network and v6.seed != v5.seed
    assert v5.loss.truth == 0 and v6.loss.truth > 0
    assert (v6.loss.alpha, v6.loss.beta, v6.loss.ngf_eps) == (v5.loss.alpha, v5.loss.beta, v5.loss.ngf_eps)
    new, old = v6.to_dict()["data"], v5.to_dict()["data"]
    synthetic = [i for i, src in enumerate(new["train"]) if src["kind"] == "synthetic"]
    assert synthetic == [0]
    assert old["train"][0]["motion"]["identical_probability"] < new["train"][0]["motion"]["identical_probability"]
    old["train"][0]["motion"]["identical_probability"] = new["train"][0]["motion"]["identical_probability"]
    assert new == old


def test_every_training_config_in_the_repository_reads():
    """The configs beside the models and in benchmarks/ (candidates, ablations, stages) are valid
    configs, with the keys of the current schema, and the model each starts from is in the
    repository (or, for a second stage, is what its first stage writes into runs/)."""
    root = Path(__file__).resolve().parents[2]
    paths = sorted((root / "Resources" / "Models").rglob("*.yaml")) + sorted((root / "benchmarks").rglob("*.yaml"))
    assert len(paths) >= 12
    for path in paths:
        init = load_config(path).schedule.init_model
        if init is not None and (root / "runs") not in Path(init).parents:
            assert Path(init).is_file(), f"{path.relative_to(root)}: init_model {init} is missing"
