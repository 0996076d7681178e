"""Tests of MLVIRNETLib.networks.model_files: round trip, atomic writing and refusal of every kind of bad file."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from MLVIRNETLib import __version__
from MLVIRNETLib.core.geometry import ImageGrid
from MLVIRNETLib.networks.cascade import MultilevelNet, NetworkConfig, build_network
from MLVIRNETLib.networks.model_files import load_model, save_model
from MLVIRNETLib.networks.unet import UNet3D

CONFIG = NetworkConfig(levels=2, features=4, depth=2, input_size=(16, 16, 8))


def _trained_like_net(seed: int = 0) -> MultilevelNet:
    torch.manual_seed(seed)
    net = build_network(CONFIG)
    for m in net.modules():  # non-default batch-norm statistics must survive the round trip too
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.9, 1.1)
            m.num_batches_tracked.fill_(7)
    return net.eval()


class _FileCreator:
    """Unpickling this object would create ``marker`` (a stand-in for running arbitrary code)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_reproduces_outputs_and_metadata(tmp_path):
    net = _trained_like_net()
    path = save_model(tmp_path / "model.pt", net, CONFIG, {"epochs": 3, "data": ["a", "b"], "lr": 1e-4, "note": None})
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind
    loaded, info = load_model(path)
    assert not loaded.training
    assert info["config"] == CONFIG
    assert info["library_version"] == __version__ and info["format_version"] == 1
    assert info["metadata"]["epochs"] == 3 and info["metadata"]["data"] == ["a", "b"] and info["metadata"]["note"] is None
    for (k, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    grid = ImageGrid(CONFIG.input_size, (1.5, 1.5, 3.0), (10.0, -4.0, 2.0))
    f = torch.rand(1, 1, *grid.shape_zyx, generator=torch.Generator().manual_seed(0))
    m = torch.rand(1, 1, *grid.shape_zyx, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(
            net(f, m, grid).deformation.displacement, loaded(f, m, grid).deformation.displacement, rtol=0, atol=0
        )


def test_save_is_atomic_and_keeps_existing_file_on_failure(tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, _trained_like_net(0), CONFIG, {"run": 1})
    before = path.read_bytes()
    with pytest.raises(ValueError, match="metadata.*object"):
        save_model(path, _trained_like_net(1), CONFIG, {"run": object()})
    other = NetworkConfig(levels=2, features=8, depth=2, input_size=(16, 16, 8))
    with pytest.raises(ValueError, match="does not match config"):
        save_model(path, _trained_like_net(1), other, {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    save_model(path, _trained_like_net(1), CONFIG, {"run": 2})
    assert load_model(path)[1]["metadata"]["run"] == 2
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        save_model(tmp_path / "no_such_dir" / "m.pt", _trained_like_net(), CONFIG, {})


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")


@pytest.mark.parametrize("keep", [0.0, 0.5, 0.95])
def test_truncated_file(tmp_path, keep):
    path = save_model(tmp_path / "m.pt", _trained_like_net(), CONFIG, {})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="m.pt"):
        load_model(path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(bytes(range(256)) * 40)
    with pytest.raises(ValueError, match="cannot read model file"):
        load_model(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, writer):
    # the payload is live: plain unpickling really creates a file
    probe = tmp_path / "probe_created"
    pickle.loads(pickle.dumps(_FileCreator(str(probe))))
    assert probe.exists()

    marker = tmp_path / "marker_created"
    path = tmp_path / "evil.pt"
    obj = {"format": "mlvirnet-model", "state_dict": _FileCreator(str(marker))}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path)
    with pytest.raises(ValueError, match="cannot read model file"):
        load_model(path)
    assert not marker.exists()


def test_foreign_state_dict_is_refused(tmp_path):
    path = tmp_path / "unet.pt"
    torch.save(UNet3D(features=4).state_dict(), path)
    with pytest.raises(ValueError, match="not an MLVIRNET model"):
        load_model(path)
    path2 = tmp_path / "list.pt"
    torch.save([torch.zeros(3)], path2)
    with pytest.raises(ValueError, match="not an MLVIRNET model"):
        load_model(path2)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = save_model(tmp_path / "m.pt", _trained_like_net(), CONFIG, {})
    payload = torch.load(path, weights_only=True)
    payload["config"]["features"] = 8  # config no longer matches the weights
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"shape \(4, 2, 3, 3, 3\).*needs \(8, 2, 3, 3, 3\)"):
        load_model(path)
    payload["config"]["features"] = 4
    payload["config"]["levels"] = 3
    payload["config"]["input_size"] = [32, 32, 32]
    torch.save(payload, path)
    with pytest.raises(ValueError, match="missing keys"):
        load_model(path)


def test_bad_envelope_entries_are_refused(tmp_path):
    path = save_model(tmp_path / "m.pt", _trained_like_net(), CONFIG, {})
    good = torch.load(path, weights_only=True)
    cases = [
        ({"format_version": 99}, "format version 99"),
        ({"config": {"levels": 3, "colour": "red"}}, "unknown network config keys"),
        ({"config": [1, 2]}, "'config' must be a dict"),
        ({"state_dict": {**good["state_dict"], "nets.0.head.bias": torch.tensor([float("nan"), 0.0, 0.0])}}, "non-finite"),
        ({"state_dict": {**good["state_dict"], "nets.0.head.bias": "x"}}, "expected a tensor"),
    ]
    for change, message in cases:
        torch.save({**good, **change}, path)
        with pytest.raises(ValueError, match=message):
            load_model(path)


def test_load_to_map_location_and_directory_path(tmp_path):
    path = save_model(tmp_path / "m.pt", _trained_like_net(), CONFIG, {})
    net, _ = load_model(path, map_location=torch.device("cpu"))
    assert all(p.device.type == "cpu" for p in net.parameters())
    with pytest.raises(ValueError, match=r"is a folder, not a model file.*model files in it: \['m.pt'\]"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="map_location"):
        load_model(path, map_location="no-such-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            load_model(path, map_location="cuda")
    assert os.listdir(tmp_path) == ["m.pt"]


def test_text_file_is_not_a_model_file(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, these are notes and not weights\n")
    with pytest.raises(ValueError, match=r"notes.pt: not an MLVIRNET model file \(.*starts with b'hello, t'"):
        load_model(path)


def test_absurd_input_size_is_refused_before_allocation(tmp_path):
    path = save_model(tmp_path / "m.pt", _trained_like_net(), CONFIG, {})
    payload = torch.load(path, weights_only=True)
    payload["config"]["input_size"] = [1024, 1024, 1024]
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"input size of \(1024, 1024, 1024\) voxels.*GB"):
        load_model(path)
    payload["config"].update(features=16, input_size=[512, 512, 512])  # 512 per axis, but about 52 GB
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"\(512, 512, 512\) voxels \(134 million\), which would need about 52 GB"):
        load_model(path)
    big = NetworkConfig(levels=2, features=4, depth=2, input_size=(1024, 16, 16))
    with pytest.raises(ValueError, match=r"cannot save .*\(1024, 16, 16\)"):
        save_model(tmp_path / "big.pt", build_network(big), big, {})
