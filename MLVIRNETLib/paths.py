"""Where MLVIRNET finds the files it ships (model weights, the bundled CT)."""

from __future__ import annotations

from pathlib import Path

_REPO_RESOURCES = Path(__file__).resolve().parent.parent / "Resources"


def resource_path(*parts: str) -> Path:
    """Path of a shipped resource, e.g. ``resource_path("Models", "mlvirnet_default.pt")``.

    Works from a source checkout or Slicer extension (``Resources/`` beside ``MLVIRNETLib/``) and
    from an installed wheel (``Resources/`` packaged as ``MLVIRNETLib.resources``).
    """
    if _REPO_RESOURCES.is_dir():
        return _REPO_RESOURCES.joinpath(*parts)
    import importlib.resources

    return Path(str(importlib.resources.files("MLVIRNETLib.resources").joinpath(*parts)))


def bundled_ct_path() -> Path:
    """The bundled real chest CT (TotalSegmentator test image, Apache-2.0)."""
    return resource_path("Data", "totalseg_chest_ct.nii.gz")


def default_model_path() -> Path:
    """The shipped default model weights (may not exist yet)."""
    return resource_path("Models", "mlvirnet_default.pt")

