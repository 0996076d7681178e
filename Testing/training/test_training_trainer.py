"""Tests of progressive training (``mlvirnet train``) at a tiny size: outputs, the progressive
schedule (frozen coarse levels, warm starts), exact resume after a kill, multi-process training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from training_phantom import write_phantom

from MLVIRNETLib.cli import main as cli_main
from MLVIRNETLib.networks.model_files import load_model
from MLVIRNETLib.training import load_config, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("train_data")
    write_phantom(folder, seed=0, name="a")
    write_phantom(folder, seed=1, name="b")
    return folder


def _config(folder: Path, name: str, **schedule) -> Path:
    d = {
        "seed": 3,
        "output_dir": f"run_{name}",
        "network": {"levels": 2, "features": 4, "depth": 2, "input_size": [16, 16, 16]},
        "schedule": {"steps": 8, "checkpoint_every": 2, "validate_every": 4, "learning_rate": 0.002, **schedule},
        "loss": {"alpha": 10.0, "beta": 1.0, "ngf_eps": 0.01},
        "data": {
            "train": [{"kind": "synthetic", "images": ["a.nii.gz"], "masks": ["a_mask.nii.gz"]},
                      {"kind": "phases", "images": ["a.nii.gz", "b.nii.gz"], "weight": 0.3}],
            "validation": [{"kind": "synthetic", "images": ["b.nii.gz"], "masks": ["b_mask.nii.gz"], "peaks_mm": [8]}],
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _weights(path: Path) -> dict[str, torch.Tensor]:
    net, _ = load_model(path)
    return net.state_dict()


def test_cli_train_writes_model_logs_and_checkpoints(data, capsys):
    cfg = _config(data, "cli")
    assert cli_main(["train", "--config", str(cfg), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    run = data / "run_cli"
    assert summary["steps"] == 8 and Path(summary["model"]) == run / "model.pt"
    net, info = load_model(run / "model.pt")  # weights_only loading
    assert info["metadata"]["steps"] == 8 and info["metadata"]["training"]["seed"] == 3
    assert {"error_mm", "initial_error_mm", "dice", "folding_percent"} <= set(summary["validation"])
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,stage,level,split,name,value,time_s"
    assert any(",train,ngf," in r for r in rows) and any(",val,error_mm," in r for r in rows)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run / "stages").iterdir()) == ["stage0.pt", "stage1.pt"]
    # a second run into the same folder is refused (nothing overwritten)
    before = (run / "model.pt").read_bytes()
    assert cli_main(["train", "--config", str(cfg), "--quiet"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (run / "model.pt").read_bytes() == before


def test_progressive_schedule_freezes_coarse_levels_and_warm_starts(data):
    """Stage 0 trains level 1 (coarse) only; stage 1 trains level 0 only, starting from level 1's
    weights (warm start: after one Adam step they differ by at most about the learning rate)."""
    warm = train(load_config(_config(data, "warm", level_steps=[4, 1])), quiet=True)
    stage0 = _weights(warm.output_dir / "stages" / "stage0.pt")
    final = _weights(warm.model_path)
    fresh = load_config(_config(data, "fresh_init", level_steps=[4, 1]))
    from MLVIRNETLib.training.trainer import initial_network

    init = initial_network(fresh).state_dict()
    convs = [k for k in final if k.endswith("weight") and final[k].ndim == 5]
    for k in (k for k in final if k.startswith("nets.1.")):
        assert torch.equal(final[k], stage0[k]), k  # frozen in stage 1
    for k in (k for k in convs if k.startswith("nets.0.")):
        assert torch.equal(stage0[k], init[k]), k  # untouched in stage 0
        twin = k.replace("nets.0.", "nets.1.")
        assert float((final[k] - final[twin]).abs().max()) <= 1.5 * 0.002, k  # warm start + one step
    cold = train(load_config(_config(data, "cold", level_steps=[4, 1], warm_start=False)), quiet=True)
    cold_w = _weights(cold.model_path)
    assert max(float((cold_w[k] - cold_w[k.replace("nets.0.", "nets.1.")]).abs().max())
               for k in convs if k.startswith("nets.0.")) > 0.05


def test_init_model_starts_every_level_from_that_model(data):
    """Fine-tuning: the run starts from the given model's weights (no Xavier, no warm-start copy),
    and a model of another architecture is refused by name."""
    from MLVIRNETLib.training.trainer import initial_network

    base = train(load_config(_config(data, "base", level_steps=[3, 2], warm_start=False)), quiet=True)
    cfg = load_config(_config(data, "tuned", level_steps=[0, 2], init_model=str(base.model_path)))
    start = initial_network(cfg).state_dict()
    for k, v in _weights(base.model_path).items():
        assert torch.equal(start[k], v), k
    tuned = _weights(train(cfg, quiet=True).model_path)
    before = _weights(base.model_path)
    convs = [k for k in tuned if k.startswith("nets.0.") and k.endswith("weight") and tuned[k].ndim == 5]
    # level 0 moved by about the learning rate per step from its own weights, not from level 1's
    assert max(float((tuned[k] - before[k]).abs().max()) for k in convs) <= 2 * 1.5 * 0.002
    assert max(float((tuned[k] - before[k.replace("nets.0.", "nets.1.")]).abs().max()) for k in convs) > 0.01
    other = load_config(_config(data, "other", init_model=str(base.model_path)))
    other.network.features = 8
    with pytest.raises(ValueError, match="init_model"):
        initial_network(other)


def test_the_supervised_term_adds_its_weight_times_the_displacement_error(data):
    """``loss.truth > 0``: synthetic pairs carry their known deformation, and the loss of a pair is
    the paper's loss plus ``truth * displacement_error`` inside the fixed lungs."""
    from MLVIRNETLib.losses import displacement_error
    from MLVIRNETLib.training.trainer import build_sources, initial_network, pair_loss

    cfg = load_config(_config(data, "truth"))
    cfg.loss.truth = 0.05
    net = initial_network(cfg)
    source = build_sources(cfg).sources[0]
    assert source.with_truth
    pair = source.sample(torch.Generator().manual_seed(2))
    assert pair.truth is not None
    with torch.no_grad():
        loss, terms = pair_loss(net, pair, cfg, 2)
        cfg.loss.truth = 0.0
        plain, plain_terms = pair_loss(net, pair, cfg, 2)
        out = net(pair.fixed, pair.moving, pair.grid)
        lungs = pair.fixed_masks.sum(dim=1, keepdim=True).clamp(0, 1)
        err = displacement_error(out.deformation.displacement, pair.truth.on_grid(out.grids[-1]).displacement, lungs)
    assert "truth" not in plain_terms and float(terms["truth"]) == pytest.approx(float(err), rel=1e-5)
    assert float(err) > 1.0  # an untrained net is far from the truth
    assert float(loss) == pytest.approx(float(plain) + 0.05 * float(err), rel=1e-5)


def test_the_identity_term_adds_its_weight_times_the_displacement_for_the_fixed_image_twice(data):
    """``loss.identity > 0``: the loss of a pair gains ``identity`` times the mean squared
    displacement inside the fixed lungs that the active levels predict for (fixed, fixed), with a
    gradient that reaches the active level only."""
    from MLVIRNETLib.core.pyramid import build_pyramid
    from MLVIRNETLib.losses import displacement_error
    from MLVIRNETLib.networks.cascade import freeze_levels
    from MLVIRNETLib.training.trainer import build_sources, initial_network, pair_loss

    cfg = load_config(_config(data, "identity"))
    net = initial_network(cfg)
    pair = build_sources(cfg).sources[0].sample(torch.Generator().manual_seed(3))
    with torch.no_grad():
        plain, plain_terms = pair_loss(net, pair, cfg, 2)
        cfg.loss.identity = 0.5
        loss, terms = pair_loss(net, pair, cfg, 2)
        same = net(pair.fixed, pair.fixed, pair.grid).deformation.displacement
        lungs = pair.fixed_masks.sum(dim=1, keepdim=True).clamp(0, 1)
        err = displacement_error(same, torch.zeros_like(same), lungs)
    assert "identity" not in plain_terms and float(terms["identity"]) == pytest.approx(float(err), rel=1e-5)
    assert float(err) > 0  # an untrained net moves identical images
    assert float(loss) == pytest.approx(float(plain) + 0.5 * float(err), rel=1e-5)
    # the coarsest level frozen: the term's gradient reaches the finest net only
    freeze_levels(net, [1])
    grads = []
    for weight in (0.0, 0.5):
        net.zero_grad(set_to_none=True)
        cfg.loss.identity = weight
        pair_loss(net, pair, cfg, 2)[0].backward()
        assert all(p.grad is None for p in net.nets[1].parameters())
        grads.append(torch.cat([p.grad.flatten() for p in net.nets[0].parameters()]))
    assert not torch.allclose(grads[0], grads[1])
    # the extra pass leaves the batch norms' running statistics to the real pairs
    stats = [{k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k}]
    for weight in (0.0, 0.5):
        cfg.loss.identity = weight
        net.load_state_dict({**net.state_dict(), **stats[0]})
        pair_loss(net, pair, cfg, 2)
        stats.append({k: v.clone() for k, v in net.state_dict().items() if "running" in k or "tracked" in k})
    assert any(not torch.equal(stats[0][k], stats[1][k]) for k in stats[0])  # the pair's pass moves them
    assert all(torch.equal(stats[1][k], stats[2][k]) for k in stats[0])  # the identity pass does not
    # with the coarsest level alone active, the term is the coarsest level's displacement
    net.eval()
    with torch.no_grad():
        _, terms = pair_loss(net, pair, cfg, 1)
        coarse = net(pair.fixed, pair.fixed, pair.grid, active_levels=1)
        lungs1 = build_pyramid(pair.fixed_masks, pair.grid, 2)[1][0].sum(dim=1, keepdim=True).clamp(0, 1)
        err1 = displacement_error(coarse.deformation.displacement, torch.zeros_like(coarse.deformation.displacement), lungs1)
    assert float(terms["identity"]) == pytest.approx(float(err1), rel=1e-5)


def test_a_run_with_the_identity_term_logs_it(data):
    cfg = load_config(_config(data, "identity_run", steps=2, validate_every=2, checkpoint_every=2))
    cfg.loss.identity = 1.0
    result = train(cfg, quiet=True)
    rows = (result.output_dir / "metrics.csv").read_text().splitlines()
    assert any(",train,identity," in r for r in rows)


def test_single_level_network_trains(data):
    cfg = load_config(_config(data, "single", steps=4))
    cfg.network.levels = 1
    result = train(cfg, quiet=True)
    net, info = load_model(result.model_path)
    assert net.num_levels == 1 and info["metadata"]["steps"] == 4


def _run_cli(cfg: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "MLVIRNETLib.cli", "train", "--config", str(cfg), "--quiet",
                             "--threads", "1", *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_kill_continues_exactly(data):
    """SIGKILL a run in the middle of its second level, resume it: same final weights as a run
    that was never interrupted, and no duplicate log rows."""
    schedule = dict(level_steps=[12, 12], checkpoint_every=2, validate_every=6)
    reference = _run_cli(_config(data, "reference", **schedule))
    assert reference.wait(timeout=300) == 0, reference.stderr.read().decode()

    cfg = _config(data, "killed", **schedule)
    run = data / "run_killed"
    proc = _run_cli(cfg)
    sidecar = run / "checkpoints" / "last.json"
    deadline = time.time() + 300
    while time.time() < deadline:
        if sidecar.exists() and json.loads(sidecar.read_text())["step"] >= 14:
            proc.send_signal(signal.SIGKILL)
            break
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed")
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads(sidecar.read_text())["step"]
    assert 14 <= killed_at < 24 and not (run / "model.pt").exists()

    resumed = _run_cli(cfg, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    ref_w, res_w = _weights(data / "run_reference" / "model.pt"), _weights(run / "model.pt")
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        assert torch.equal(ref_w[k], res_w[k]), k
    keys = [tuple(r.split(",")[:5]) for r in (run / "metrics.csv").read_text().splitlines()[1:]]
    assert len(keys) == len(set(keys))
    ref_rows = (data / "run_reference" / "metrics.csv").read_text().splitlines()
    assert len(keys) == len(ref_rows) - 1


def test_resume_checks_configuration_and_checkpoint(data, capsys):
    cfg = _config(data, "changed", steps=4)
    train(load_config(cfg), quiet=True)
    changed = load_config(cfg)
    changed.loss.alpha = 99.0
    with pytest.raises(ValueError, match="loss.alpha"):
        train(changed, resume=True, quiet=True)
    # a checkpoint written before a config key existed resumes with that key's default
    from MLVIRNETLib.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt_path = data / "run_changed" / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    del ckpt["config"]["loss"]["identity"]
    save_checkpoint(ckpt_path, {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "library_version")})
    assert train(load_config(cfg), resume=True, quiet=True).steps == 4
    changed.loss.alpha = load_config(cfg).loss.alpha
    changed.loss.identity = 0.5
    with pytest.raises(ValueError, match="loss.identity"):
        train(changed, resume=True, quiet=True)
    missing = load_config(_config(data, "never_ran", steps=4))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        train(missing, resume=True, quiet=True)


def test_torchrun_two_processes(data):
    """DistributedDataParallel with two CPU processes (Gloo), started by torchrun, with the
    identity term on (a second forward pass of the bare net before each backward)."""
    cfg = _config(data, "ddp", steps=4)
    d = yaml.safe_load(cfg.read_text())
    d["loss"]["identity"] = 0.5
    cfg.write_text(yaml.safe_dump(d))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "MLVIRNETLib.cli", "train", "--config", str(cfg), "--quiet", "--threads", "1", "--json"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = (data / "run_ddp" / "metrics.csv").read_text().splitlines()
    assert "0,0,1,info,world_size,2,0.0" in rows
    assert any(",train,identity," in r for r in rows)
    assert load_model(data / "run_ddp" / "model.pt")[1]["metadata"]["hardware"]["processes"] == 2


def test_data_workers_give_the_same_run(data):
    """Pairs made ahead by worker processes are the pairs the training process would make: the
    same losses at every step and the same weights, with two workers and with none."""
    cfg0 = load_config(_config(data, "workers0", steps=6, batch_size=2))
    cfg2 = load_config(_config(data, "workers2", steps=6, batch_size=2, data_workers=2))
    assert cfg2.schedule.data_workers == 2
    train(cfg0, quiet=True)
    train(cfg2, quiet=True)

    def losses(run: str) -> list[str]:
        rows = (data / run / "metrics.csv").read_text().splitlines()
        return [r.rsplit(",", 1)[0] for r in rows if ",train," in r]  # without the elapsed time

    assert len(losses("run_workers0")) > 6 and losses("run_workers0") == losses("run_workers2")
    w0, w2 = _weights(data / "run_workers0" / "model.pt"), _weights(data / "run_workers2" / "model.pt")
    assert all(torch.equal(w0[k], w2[k]) for k in w0)


def test_validation_by_registration_is_logged_once_every_level_is_active(data):
    """``register_landmarks`` adds the acceptance measurement (``register()`` with the net alone,
    landmark TRE) to the validation, from the stage where the whole cascade trains."""
    path = _config(data, "regval", steps=4, validate_every=1)
    d = yaml.safe_load(path.read_text())
    d["data"]["validation"][0]["register_landmarks"] = 12
    path.write_text(yaml.safe_dump(d))
    result = train(load_config(path), quiet=True)
    rows = [r.split(",") for r in (data / "run_regval" / "metrics.csv").read_text().splitlines()[1:]]
    steps = sorted({int(r[0]) for r in rows if r[3] == "val" and r[4] == "register_tre_mm"})
    assert steps == [3, 4]  # 2 levels, 2 steps each: stage 1 (both levels) is steps 3 and 4
    initial = {float(r[5]) for r in rows if r[4] == "register_initial_tre_mm"}
    assert len(initial) == 1 and initial.pop() > 1.0  # the same cases every time, with motion
    assert result.validation["register_tre_mm"] < result.validation["register_initial_tre_mm"] + 1.0


def test_validation_by_registration_measures_fixed_to_moving_tre(data):
    """On a pure translation, which the affine stage mostly recovers on this coarse phantom (its
    one level is at 8 mm), the TRE of a net that outputs no displacement falls well below the
    shift; mapping the landmarks the wrong way (moving to fixed, or minus the displacement) would
    give about twice the shift."""
    import numpy as np
    import SimpleITK as sitk

    from MLVIRNETLib.core.geometry import ImageGrid, zyx_to_xyz
    from MLVIRNETLib.io.images import read_image
    from MLVIRNETLib.networks.cascade import NetworkConfig, build_network
    from MLVIRNETLib.training.validation import RegistrationCase, validate_by_registration

    fixed = read_image(data / "a.nii.gz")
    lungs = sitk.Cast(read_image(data / "a_mask.nii.gz") > 0, sitk.sitkUInt8)
    shift = np.array([4.0, -3.0, 5.0])  # mm, x_moving = x_fixed + shift
    moving = sitk.Resample(fixed, fixed, sitk.TranslationTransform(3, tuple(-shift)), sitk.sitkLinear, -1000.0)
    idx = zyx_to_xyz(np.argwhere(sitk.GetArrayViewFromImage(lungs))[::97])  # (i, j, k) of lung voxels
    points = ImageGrid.from_sitk(fixed).index_to_world(idx.astype(float))
    net = build_network(NetworkConfig(levels=2, features=4, depth=2, input_size=[16, 16, 16]))
    with torch.no_grad():
        for unet in net.nets:
            unet.head.weight.zero_()
            unet.head.bias.zero_()
    case = RegistrationCase("shift", fixed, moving, lungs, points, points + shift)
    metrics = validate_by_registration(net, [case])
    assert abs(metrics["register_initial_tre_mm"] - np.linalg.norm(shift)) < 1e-6
    assert metrics["register_tre_mm"] < 0.4 * np.linalg.norm(shift)  # 2.1 of 7.1 mm measured
    assert metrics["register_tre_p95_mm"] < 0.6 * np.linalg.norm(shift)


def test_validation_case_without_lungs_names_the_image(tmp_path):
    import SimpleITK as sitk

    from MLVIRNETLib.training.validation import registration_cases

    flat = sitk.Image([40, 40, 30], sitk.sitkInt16) + 40  # soft tissue only: no lungs
    flat.SetSpacing((5.0, 5.0, 5.0))
    path = tmp_path / "no_lungs.nii.gz"
    sitk.WriteImage(flat, str(path))
    with pytest.raises(ValueError, match=r"validation case from .*no_lungs\.nii\.gz \(register_landmarks\)"):
        registration_cases([str(path)], None, [20.0], 10, seed=0)
