"""Where the time goes: seconds per named stage of the pose path, on the host and, for CUDA, on the device.

    clock = StageClock(device="cuda")
    with clock.stage("model", device_work=True):
        heatmaps = model(crops)
    clock.totals()    # {"model": Stage(calls, wall_s, cpu_s, device_s)}
    clock.busy_s()    # seconds in which the GPU ran one of the device stages (None off CUDA)

Host figures per stage: `wall_s` (perf_counter) and `cpu_s` (the calling thread's CPU time, `time.thread_time`:
what the stage costs a core, whatever else runs beside it). Stages may run in several threads at once (the pose
actor runs two batches at a time); the clock is thread-safe and sums over threads. A stage may enclose others
("call" encloses every stage of one batch); the reader decides what to subtract.

On CUDA, a stage marked `device_work=True` also records a pair of CUDA events on the current stream. Each pair is one
interval of the GPU's timeline (positions measured from an event recorded when the clock was made); `busy_s` is the
length of their union, so two threads' interleaved work is not counted twice. A stage's interval runs from when the
GPU reached its first event to when it reached its last, so a gap inside a stage (the GPU waiting for the host to
launch its next kernel) counts as busy: `busy_s` is an upper bound of the GPU's busy time.

Timing costs about 2 us per stage on the host; a clock that is None costs nothing (`timed(None, ...)`).
"""

from __future__ import annotations

import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Stage:
    """One stage's totals: calls, host wall seconds, host CPU seconds (of the calling threads), and GPU seconds of
    its own intervals (None when not timed on a device)."""

    calls: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    device_s: float | None = None


class StageClock:
    """Seconds per named stage (see the module docstring). `device`: a CUDA device makes `device_work` stages
    record CUDA events there; any other device times the host only."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        device = torch.device(device) if device is not None else None
        self.cuda = device is not None and device.type == "cuda"
        self.lock = threading.Lock()
        self.stages: dict[str, Stage] = {}
        self.events: list[tuple[str, Any, Any]] = []  # (stage, start event, end event)
        self.origin = None
        if self.cuda:
            with torch.cuda.device(device):
                self.origin = torch.cuda.Event(enable_timing=True)
                self.origin.record()

    def stage(self, name: str, device_work: bool = False) -> "_Timing":
        return _Timing(self, name, device_work and self.cuda)

    def add(self, name: str, wall_s: float, cpu_s: float, events: tuple[Any, Any] | None = None) -> None:
        with self.lock:
            stage = self.stages.setdefault(name, Stage())
            stage.calls += 1
            stage.wall_s += wall_s
            stage.cpu_s += cpu_s
            if events is not None:
                self.events.append((name, *events))

    def device_intervals(self) -> list[tuple[str, float, float]]:
        """(stage, start s, end s) on the GPU's timeline, from the clock's origin; waits for the GPU to reach them."""
        if not self.cuda:
            return []
        with self.lock:
            events = list(self.events)
        if events:
            events[-1][2].synchronize()
        return [(name, self.origin.elapsed_time(start) / 1e3, self.origin.elapsed_time(end) / 1e3)
                for name, start, end in events]

    def totals(self) -> dict[str, Stage]:
        """Every stage's totals, with `device_s` (the sum of its own GPU intervals) for stages timed on CUDA."""
        intervals = self.device_intervals()
        with self.lock:
            out = {name: Stage(s.calls, s.wall_s, s.cpu_s) for name, s in self.stages.items()}
        for name, start, end in intervals:
            out[name].device_s = (out[name].device_s or 0.0) + (end - start)
        return out

    def busy_s(self) -> float | None:
        """Seconds of the GPU's timeline covered by at least one device stage (their union); None off CUDA."""
        if not self.cuda:
            return None
        return union_length([(start, end) for _, start, end in self.device_intervals()])


class _Timing:
    __slots__ = ("clock", "name", "cuda", "wall", "cpu", "start_event")

    def __init__(self, clock: StageClock, name: str, cuda: bool) -> None:
        self.clock, self.name, self.cuda = clock, name, cuda

    def __enter__(self) -> "_Timing":
        if self.cuda:
            self.start_event = torch.cuda.Event(enable_timing=True)
            self.start_event.record()
        self.wall, self.cpu = time.perf_counter(), time.thread_time()
        return self

    def __exit__(self, *exc) -> None:
        wall, cpu = time.perf_counter() - self.wall, time.thread_time() - self.cpu
        events = None
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            events = (self.start_event, end)
        self.clock.add(self.name, wall, cpu, events)


_UNTIMED = nullcontext()


def timed(clock: StageClock | None, name: str, device_work: bool = False):
    """`clock.stage(name)` or, without a clock, a context that does nothing."""
    return _UNTIMED if clock is None else clock.stage(name, device_work)


def union_length(intervals: list[tuple[float, float]]) -> float:
    """Total length covered by (start, end) intervals, overlaps counted once."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total
