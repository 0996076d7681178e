"""The Logic's worker thread: the calling thread keeps getting callbacks while the library works."""

from __future__ import annotations

import threading
import time

import pytest

from MLVIRNETLib.core.progress import RegistrationCancelled
from MLVIRNETLib.mrml.logic import runInWorkerThread


def test_callbacks_go_on_in_the_calling_thread_while_the_worker_is_silent():
    calls = []
    repeated = threading.Event()

    def work(progress):
        progress(0.25, "started")
        # a long step without reports (e.g. one large convolution): it ends once the calling
        # thread has been called three times meanwhile, or fails after 60 s
        assert repeated.wait(60), "the calling thread was not called again while the worker was silent"
        progress(1.0, "done")
        return threading.get_ident()

    def callback(fraction, message):
        calls.append((fraction, message, threading.get_ident()))
        if sum(c[1] == "started" for c in calls) >= 3:
            repeated.set()

    worker = runInWorkerThread(work, callback)
    assert worker != threading.get_ident()
    assert {c[2] for c in calls} == {threading.get_ident()}
    assert calls[0][:2] == (0.25, "started") and calls[-1][:2] == (1.0, "done")
    assert sum(c[1] == "started" for c in calls) >= 3


def test_the_workers_error_is_raised_in_the_calling_thread():
    def work(progress):
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        runInWorkerThread(work, lambda f, m: None)


def test_an_error_in_the_callback_stops_the_worker_first():
    stop = threading.Event()
    finished = threading.Event()

    def work(progress):
        progress(0.1, "working")
        while not stop.is_set():
            time.sleep(0.01)
        finished.set()
        raise RegistrationCancelled("stopped")

    def callback(fraction, message):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        runInWorkerThread(work, callback, stop=stop.set)
    assert finished.is_set()
