"""The training recipes (training_recipes/): configs that read, parents fetched from the lineage
tag with their sha256 checked, and recipes that stand on their own."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from MLVIRNETLib.training import load_config

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "training_recipes"
TAG = "models-lineage-v1-v5"


def _lineage() -> dict[str, str]:
    lines = (RECIPES / "common" / "lineage.sha256").read_text().splitlines()
    return {v: sha for sha, v in (line.split() for line in lines if line.strip() and not line.startswith("#"))}


def _has_tag() -> bool:
    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "-q", "--verify", f"refs/tags/{TAG}"], capture_output=True
    ).returncode == 0


def test_the_two_stages_of_model_v4_chain_up():
    """Model v4's stage 2 starts from the model that stage 1 writes, stage 1 from its fetched
    parent, and stage 1 trains every level."""
    stage1 = load_config(RECIPES / "model_v4" / "stage1.yaml")
    stage2 = load_config(RECIPES / "model_v4" / "stage2.yaml")
    assert Path(stage2.schedule.init_model) == Path(stage1.output_dir) / "model.pt"
    assert Path(stage1.schedule.init_model) == (RECIPES / "model_v4" / "parent.pt").resolve()
    assert all(n > 0 for n in stage1.schedule.level_steps)
    assert stage2.schedule.level_steps[0] == 0
    assert stage1.to_dict()["data"] == stage2.to_dict()["data"]
    assert stage1.network == stage2.network and stage1.loss == stage2.loss


def test_model_v5_continues_model_v4_on_the_same_data():
    v5 = load_config(RECIPES / "model_v5" / "config.yaml")
    v4 = load_config(RECIPES / "model_v4" / "stage2.yaml")
    assert v5.schedule.level_steps[0] == 0 and all(n > 0 for n in v5.schedule.level_steps[1:])
    assert v5.to_dict()["data"] == v4.to_dict()["data"]
    assert v5.network == v4.network and v5.loss == v4.loss
    assert v5.seed != v4.seed


def test_the_shipped_recipe_adds_the_supervised_term_to_its_parents():
    """The shipped model's recipe trains its parent's finest level only, with the parent's network,
    CTs and appearance, eq. (2) with the parent's weights plus the supervised term, and a larger
    share of identical pairs; nothing else in the data changes."""
    v6 = load_config(RECIPES / "model_v6" / "config.yaml")
    v5 = load_config(RECIPES / "model_v5" / "config.yaml")
    assert list(v6.schedule.level_steps[:2]) == [0, 0] and v6.schedule.level_steps[2] > 0
    assert v6.network == v5.network and v6.seed != v5.seed
    assert v5.loss.truth == 0 and v6.loss.truth > 0
    assert (v6.loss.alpha, v6.loss.beta, v6.loss.ngf_eps) == (v5.loss.alpha, v5.loss.beta, v5.loss.ngf_eps)
    new, old = v6.to_dict()["data"], v5.to_dict()["data"]
    assert [i for i, src in enumerate(new["train"]) if src["kind"] == "synthetic"] == [0]
    assert old["train"][0]["motion"]["identical_probability"] < new["train"][0]["motion"]["identical_probability"]
    old["train"][0]["motion"]["identical_probability"] = new["train"][0]["motion"]["identical_probability"]
    assert new == old


def test_every_training_config_reads_and_finds_its_parent():
    """Every config is valid with the current schema; the model it starts from is its recipe's
    parent.pt (which that recipe's reproduce.sh fetches from the tag), the shipped model, or what
    an earlier stage writes into runs/."""
    paths = sorted(RECIPES.rglob("*.yaml"))
    assert len(paths) == 14  # 3 ablation, 1+2+1+2+1+3 model configs
    for path in paths:
        init = load_config(path).schedule.init_model
        if init is None or (ROOT / "runs") in Path(init).parents:
            continue
        if Path(init).name == "parent.pt":
            script = (path.parent / "reproduce.sh").read_text()
            assert re.search(r'fetch_parent\.sh" v[1-5] "\$here/parent\.pt"', script), \
                f"{path.relative_to(ROOT)}: its reproduce.sh does not fetch parent.pt"
        else:
            assert Path(init).is_file(), f"{path.relative_to(ROOT)}: init_model {init} is missing"


def test_recipes_stand_on_their_own():
    """No recipe calls into another recipe's folder; shared scripts are in common/ only."""
    offenders = []
    for path in sorted(RECIPES.rglob("*")):
        if not path.is_file() or path.suffix not in (".sh", ".py") or path.parent.name == "common":
            continue
        own = path.parent.name
        for other in re.findall(r"(?:training_recipes/|\.\./)(model_v\d|ablation)\b", path.read_text()):
            if other != own:
                offenders.append(f"{path.relative_to(ROOT)} -> {other}")
    assert not offenders, offenders


@pytest.mark.skipif(not _has_tag(), reason=f"the git tag {TAG} is not in this clone (git fetch origin tag {TAG})")
def test_the_tag_holds_every_parent_with_its_recorded_sha256(tmp_path):
    """fetch_parent.sh writes each earlier model with the recorded sha256, and refuses (writing
    nothing) a file whose sha256 differs."""
    lineage = _lineage()
    assert sorted(lineage) == ["v1", "v2", "v3", "v4", "v5"]
    for version in lineage:
        dest = tmp_path / f"{version}.pt"
        subprocess.run(["bash", str(RECIPES / "common" / "fetch_parent.sh"), version, str(dest)], check=True,
                       capture_output=True)
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == lineage[version]
    # a wrong recorded sha256 is refused, and no file is left
    sums = tmp_path / "lineage.sha256"
    sums.write_text((RECIPES / "common" / "lineage.sha256").read_text().replace(lineage["v5"], "0" * 64))
    run = subprocess.run(["bash", str(RECIPES / "common" / "fetch_parent.sh"), "v5", str(tmp_path / "bad.pt")],
                         capture_output=True, text=True, env={**os.environ, "LINEAGE_SHA256": str(sums)})
    assert run.returncode != 0 and "expected " + "0" * 64 in run.stderr
    assert not (tmp_path / "bad.pt").exists() and not (tmp_path / "bad.pt.part").exists()
