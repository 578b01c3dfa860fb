"""Which sections run with which sample sizes, and running them in order."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import attrs
from rich.console import Console

from benchmarks import SECTIONS
from benchmarks.capture import measure_capture, measure_mlflow_metrics
from benchmarks.cli_startup import measure_cli_startup
from benchmarks.cold import measure_cold
from benchmarks.join import CASES, measure_join
from benchmarks.orchard import measure_orchard
from benchmarks.sacred_baseline import measure_sacred
from benchmarks.scale import (
    measure_advance,
    measure_concurrency,
    measure_existing_runs,
    measure_growth,
)
from benchmarks.summary import load_average
from benchmarks.warm import measure_warm

__all__ = ["BenchmarkSettings"]


@attrs.frozen
class BenchmarkSettings:
    """Sample sizes and the sections to run."""

    quick: bool
    iterations: int
    cold_runs: int
    existing: tuple[int, ...]
    processes: tuple[int, ...]
    machines: int
    sections: tuple[str, ...]

    @classmethod
    def from_args(
        cls,
        *,
        quick: bool,
        iterations: int | None,
        cold_runs: int | None,
        existing: Sequence[int] | None,
        processes: Sequence[int] | None,
        machines: int | None,
        only: Sequence[str] | None,
    ) -> BenchmarkSettings:
        """Full-size defaults, or quick ones; explicit values win over both."""
        if processes is not None and 0 in processes:
            raise ValueError(f"process counts must be >= 1, got {list(processes)}")
        return cls(
            quick=quick,
            iterations=iterations or (5 if quick else 60),
            cold_runs=cold_runs or (1 if quick else 9),
            existing=tuple(existing or ((0, 100) if quick else (0, 1000, 10000))),
            processes=tuple(processes or ((1, 2) if quick else (1, 8, 32))),
            machines=machines or (50 if quick else 2000),
            sections=tuple(section for section in SECTIONS if not only or section in only),
        )

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def run(self, console: Console) -> dict[str, Any]:
        """Run the selected sections; a key per section in the result, plus
        ``progress``: each part's wall time and the load average when it started."""
        results: dict[str, Any] = {}
        progress = _Progress(console)
        with_floor = "floor" in self.sections
        with_warm = "warm" in self.sections or with_floor
        if with_warm:
            with progress.part("warm round trips" + (" and the floor" if with_floor else "")):
                results.update(
                    measure_warm(self.iterations, with_ours=with_warm, with_floor=with_floor)
                )
        if "cold" in self.sections:
            with progress.part("cold starts"):
                results["cold_start"] = measure_cold(self.cold_runs, warm_up=not self.quick)
        if "cli" in self.sections:
            with progress.part("command start-up"):
                results["cli_startup"] = measure_cli_startup(self.cold_runs)
        if "scale" in self.sections:
            scale: dict[str, Any] = {}
            with progress.part("existing run directories"):
                scale["existing_runs"] = measure_existing_runs(self.existing, self.iterations)
            with progress.part("concurrent processes"):
                scale["concurrency"] = measure_concurrency(self.processes)
            with progress.part("bare machine advance()"):
                scale["advance"] = measure_advance(self.machines)
            with progress.part("a growing record (metrics calls, resumed attempts)"):
                scale["growth"] = measure_growth(
                    500 if self.quick else 10_000, 5 if self.quick else 120
                )
            results["scale"] = scale
        if "capture" in self.sections:
            with progress.part("capture and metrics unused, MLflow per call"):
                results["capture"] = measure_capture(self.iterations)
                results["capture"]["mlflow"] = measure_mlflow_metrics(100 if self.quick else 1000)
        if "orchard" in self.sections:
            with progress.part("the orchard recipe in a git checkout, strict and relaxed"):
                results["orchard"] = measure_orchard(
                    self.iterations, self.cold_runs, warm_up=not self.quick
                )
        if "sacred" in self.sections:
            with progress.part("ours and Sacred, the orchard recipe in a git checkout"):
                results["sacred"] = measure_sacred(self.iterations)
        if "join" in self.sections:
            with progress.part("joining one run: READY lag (torchrun, mp.spawn), polling cost"):
                results["join"] = measure_join(
                    (2,) if self.quick else (2, 4, 8, 16),
                    repeats=1 if self.quick else 3,
                    wait_s=2.5 if self.quick else 8.0,
                    cases=("entry, not ready",) if self.quick else CASES,
                )
        results["progress"] = progress.parts
        return results


class _Progress:
    """Says on the console what is being measured, and records how long each part took
    and the load average when it started (other work on the machine skews numbers)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self.parts: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def part(self, label: str) -> Iterator[None]:
        load = load_average()
        self._console.print(f"[dim]measuring {label} (load average {load})...[/dim]")
        t0 = time.perf_counter()
        yield
        elapsed = time.perf_counter() - t0
        self.parts.append(
            {"part": label, "load_average_at_start": load, "wall_s": round(elapsed, 1)}
        )
        self._console.print(f"[dim]  {label}: {elapsed:.1f} s[/dim]")
