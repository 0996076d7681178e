"""The one progress/cancel protocol: stage mapping, throttling, cancel at every report, nesting."""

from __future__ import annotations

import pytest

from MLVIRNETLib.core.progress import Progress, RegistrationCancelled


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr("MLVIRNETLib.core.progress.time.perf_counter", c)
    return c


@pytest.mark.parametrize("start, width, local, expected", [(0.0, 1.0, 0.5, 0.5), (0.2, 0.5, 0.5, 0.45), (0.9, 0.1, 1.0, 1.0)])
def test_stage_maps_local_fractions(start, width, local, expected):
    seen = []
    prog = Progress(lambda f, m: seen.append(f), min_interval_s=0.0)
    prog.stage(start, width, "stage")
    prog(local, "step")
    assert seen == [pytest.approx(start), pytest.approx(expected)]


def test_progress_never_goes_backwards_and_is_clamped():
    seen = []
    prog = Progress(lambda f, m: seen.append(f), min_interval_s=0.0)
    prog.stage(0.5, 0.5, "b")
    prog(2.0, "over")
    prog.stage(0.0, 0.5, "a")
    prog(-1.0, "under")
    assert seen == [0.5, 1.0, 1.0, 1.0]


def test_forwarding_is_throttled_but_the_end_of_a_stage_always_passes(clock):
    seen = []
    prog = Progress(lambda f, m: seen.append(m), min_interval_s=0.1)
    prog.stage(0.0, 1.0, "start")  # sent (first of the stage)
    clock.t = 0.05
    prog(0.2, "too soon")
    clock.t = 0.11
    prog(0.3, "late enough")
    clock.t = 0.12
    prog(1.0, "end")
    assert seen == ["start", "late enough", "end"]


def test_cancel_is_checked_at_every_report_even_when_not_forwarded(clock):
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] >= 3

    prog = Progress(lambda f, m: None, cancel, min_interval_s=10.0)
    prog(0.1, "a")
    prog(0.2, "b")
    with pytest.raises(RegistrationCancelled):
        prog(0.3, "c")


def test_nested_progress_maps_into_the_outer_stage_and_shares_its_cancel():
    seen = []
    stop = {"now": False}
    outer = Progress(lambda f, m: seen.append(round(f, 6)), lambda: stop["now"], min_interval_s=0.0)
    outer.stage(0.5, 0.5, "outer")
    inner = Progress(outer, min_interval_s=0.0)
    inner.stage(0.0, 0.5, "inner")
    inner(1.0, "inner done")
    assert seen == [0.5, 0.5, 0.75]  # inner 0.5 of the outer stage [0.5, 1.0]
    stop["now"] = True
    with pytest.raises(RegistrationCancelled):
        inner.check_cancel()


def test_of_reuses_a_progress_and_wraps_callables():
    prog = Progress()
    assert Progress.of(prog) is prog
    wrapped = Progress.of(lambda f, m: None, lambda: True)
    with pytest.raises(RegistrationCancelled):
        wrapped(0.0, "x")


def test_stage_starts_and_ends_pass_through_a_throttling_outer_progress(clock):
    seen = []
    outer = Progress(lambda f, m: seen.append(m), min_interval_s=10.0)
    outer.stage(0.0, 1.0, "outer")
    inner = Progress(outer)
    inner.stage(0.0, 0.5, "first")
    inner(0.5, "inside first")  # throttled by the outer
    inner(1.0, "first done")
    inner.stage(0.5, 0.5, "second")
    assert seen == ["outer", "first", "first done", "second"]
