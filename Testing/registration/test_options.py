"""RegistrationOptions grouped by stage, the flat names of earlier releases, and options_for."""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from MLVIRNETLib.preprocessing.lungmask import LungMaskOptions
from MLVIRNETLib.preprocessing.pair import PreprocessOptions
from MLVIRNETLib.registration import (
    AffineOptions,
    NetworkOptions,
    RefineOptions,
    RegistrationOptions,
    RuntimeOptions,
    WorkingGrid,
    options_for,
    preset_table,
)
from MLVIRNETLib.registration.options import DEPRECATED_NAMES, GROUPS


def test_each_group_is_its_stage_class_with_its_defaults() -> None:
    options = RegistrationOptions()
    assert options.refinement == RefineOptions()  # the refinement's defaults, written once
    assert options.affine == AffineOptions()
    assert options.network == NetworkOptions() and options.runtime == RuntimeOptions()
    assert options.grid == WorkingGrid() and options.grid.max_voxels == PreprocessOptions.auto_max_voxels
    assert dataclasses.replace(options.lung_mask, working_spacing_mm=LungMaskOptions.working_spacing_mm) == LungMaskOptions()
    assert [f.name for f in dataclasses.fields(RegistrationOptions)] == list(GROUPS)


def test_the_presets_resolve_to_the_settings_they_have() -> None:
    """The values every stage receives from each preset."""
    expected = {"fast": ((0,), 224), "standard": ((40, 20), 224), "accurate": ((60, 30), 288)}
    for name, (iterations, max_voxels) in expected.items():
        options = options_for(name)
        assert tuple(options.refinement.iterations_per_level()) == (iterations * 2 if len(iterations) == 1 else iterations)
        pre = options.preprocess_options(None, (0.8, 0.8, 2.0))
        assert pre == PreprocessOptions(network_size="auto", auto_max_voxels=max_voxels,
                                        auto_min_spacing_mm=(0.4, 0.4, 1.0), size_multiple=4)
        assert options.refinement.level_factors == (4, 2) and options.refinement.optimizer == "lbfgs"
        assert (options.refinement.alpha, options.refinement.beta, options.refinement.ngf_eps) == (100.0, 0.0, 0.003)
        assert options.refinement.smoothing_voxels == 2.0
        assert options.affine == AffineOptions() and options.network == NetworkOptions(precision="auto")
        assert options.lung_mask.working_spacing_mm == 3.0 and options.runtime == RuntimeOptions()
    assert "| `grid.max_voxels` | 224 | 224 | 288 |" in preset_table()


def test_options_for_merges_overrides_into_the_preset() -> None:
    options = options_for("accurate", refinement={"iterations": 10}, affine=None)
    assert options.grid.max_voxels == 288 and options.refinement.iterations == 10 and options.affine is None
    # None inside a group means "what the preset says"
    assert options_for("accurate", refinement={"iterations": None}).refinement.iterations == (60, 30)
    assert options_for("fast", grid={"size": (32, 32, 32)}).grid.size == (32, 32, 32)
    with pytest.raises(ValueError, match="unknown preset 'quick'"):
        options_for("quick")
    with pytest.raises(ValueError, match="unknown options key 'refine'"):
        options_for("fast", refine=3)
    with pytest.raises(ValueError, match=r"unknown refinement option key\(s\) \['iters'\]"):
        options_for("fast", refinement={"iters": 3})


def test_one_rule_for_the_working_grid_size() -> None:
    """At least 4 per axis; while refining, a multiple of the largest level factor with 3 voxels per
    axis on the coarsest level; the rule lives in RegistrationOptions.validate only."""
    assert options_for("fast", grid={"size": (4, 8, 12)}).grid.size == (4, 8, 12)  # no refinement
    with pytest.raises(ValueError, match=r"too small: at least 4 voxels per axis"):
        options_for("fast", grid={"size": (2, 8, 12)})
    with pytest.raises(ValueError, match="divisible by the largest refinement level factor 4"):
        options_for("standard", grid={"size": (36, 36, 38)})
    assert options_for("standard", grid={"size": (12, 16, 20)}).grid.size == (12, 16, 20)
    assert options_for("standard", grid={"size": (36, 36, 38)}, refinement={"level_factors": (2, 1)}).grid.size \
        == (36, 36, 38)


@pytest.mark.parametrize("old", sorted(DEPRECATED_NAMES))
def test_every_flat_name_still_works_with_a_deprecation_warning(old: str) -> None:
    group, key = DEPRECATED_NAMES[old]
    default = getattr(getattr(RegistrationOptions(), group), key)
    value = {"network_size": (32, 32, 32), "grid_max_voxels": 96, "refine_iterations": 7,
             "refine_levels": (2, 1), "refine_optimizer": "adam", "network_precision": "float32",
             "hu_window": (-900.0, 200.0), "num_threads": 1}.get(old)
    if value is None:
        value = (not default) if isinstance(default, bool) else type(default)(default * 2)
    with pytest.warns(DeprecationWarning, match=f"'{old}' is deprecated; use options.{group}.{key}|'{old}' is deprecated"):
        options = RegistrationOptions(**{old: value})
    assert getattr(getattr(options, group), key) == (tuple(value) if isinstance(value, tuple) else value)
    with pytest.warns(DeprecationWarning):
        assert getattr(options, old) == getattr(getattr(options, group), key)
    with pytest.warns(DeprecationWarning):
        assert options_for("standard", **{old: value}) == options


def test_the_special_flat_names_translate() -> None:
    with pytest.warns(DeprecationWarning):
        assert RegistrationOptions(affine=False).affine is None
    with pytest.warns(DeprecationWarning):
        assert RegistrationOptions(affine_options={"levels_mm": (6.0,)}).affine.levels_mm == (6.0,)
    with pytest.warns(DeprecationWarning):
        assert RegistrationOptions(use_bf16=True).network.precision == "auto-bfloat16"
    with pytest.warns(DeprecationWarning):
        assert RegistrationOptions(use_amp=False).network.precision == "float32"
    with pytest.warns(DeprecationWarning):
        assert RegistrationOptions(use_amp=True, use_bf16=False) == RegistrationOptions()
    with pytest.warns(DeprecationWarning):
        assert "network_symmetric" not in repr(RegistrationOptions(network_symmetric=True))  # internal, not a field


def test_the_slicer_logic_way_of_changing_options_still_works() -> None:
    """``dataclasses.replace(options, affine=bool, refine_iterations=n)``, as the library Logic
    calls it, gives the same options as the grouped names, and leaves the original alone."""
    base = options_for("accurate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        changed = dataclasses.replace(base, affine=False, refine_iterations=(3, 4))
    assert changed == options_for("accurate", affine=None, refinement={"iterations": (3, 4)})
    assert base == options_for("accurate")


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(ValueError, match=r"unknown options key\(s\) \['sizes'\]"):
        RegistrationOptions(sizes=3)
    options = RegistrationOptions()
    with pytest.raises(AttributeError, match="no setting 'sizes'"):
        options.sizes = 3
    with pytest.raises(TypeError, match="options.grid must be a WorkingGrid"):
        RegistrationOptions(grid=3)
