"""vitpose_core.stage_clock: seconds per stage summed over threads, CPU time apart from waiting, interval unions."""

from __future__ import annotations

import threading
import time

import pytest

from vitpose_core.stage_clock import StageClock, timed, union_length


def test_stages_sum_over_threads_and_cpu_time_excludes_waiting():
    clock = StageClock("cpu")

    def work() -> None:
        with clock.stage("wait"):
            time.sleep(0.05)
        with clock.stage("spin"):
            end = time.thread_time() + 0.03
            while time.thread_time() < end:
                pass

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    totals = clock.totals()
    assert totals["wait"].calls == totals["spin"].calls == 2
    assert totals["wait"].wall_s >= 0.1 and totals["wait"].cpu_s < 0.02  # sleeping costs no core
    assert totals["spin"].cpu_s >= 0.06
    assert totals["spin"].device_s is None and clock.busy_s() is None  # no device timeline off CUDA


def test_no_clock_times_nothing():
    with timed(None, "anything", device_work=True):
        pass


@pytest.mark.parametrize("intervals, length", [
    ([], 0.0), ([(0, 1)], 1.0), ([(0, 1), (0.5, 2)], 2.0), ([(0, 1), (2, 3)], 2.0), ([(0, 3), (1, 2)], 3.0),
    ([(2, 3), (0, 1), (0.5, 2.5)], 3.0),
])
def test_union_length_counts_overlaps_once(intervals, length):
    assert union_length(intervals) == pytest.approx(length)
