"""held_native_stderr: what C code writes to file descriptor 2 during a read is passed on when the
read succeeds and dropped when it fails (real descriptor writes, seen through pytest's capfd)."""

from __future__ import annotations

import os

import pytest
import SimpleITK as sitk

from MLVIRNETLib.io.native_stderr import held_native_stderr


def test_a_successful_block_passes_its_output_on_in_order(capfd) -> None:
    os.write(2, b"before\n")
    with held_native_stderr():
        os.write(2, b"from C\n")
        assert capfd.readouterr().err == "before\n"  # held while the block runs
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "from C\nafter\n"


def test_a_failed_block_drops_its_output(capfd) -> None:
    with pytest.raises(RuntimeError):
        with held_native_stderr():
            sitk.ImageSeriesReader.GetGDCMSeriesIDs(os.getcwd() + "/no such folder")  # ITK prints a WARNING
            os.write(2, b"HDF5-DIAG: Error detected\n")
            raise RuntimeError("the read failed")
    os.write(2, b"the one line\n")
    assert capfd.readouterr().err == "the one line\n"
