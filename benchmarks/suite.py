"""Which sections run with which sample sizes, and running them in order."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Final

import attrs
from rich.console import Console

from benchmarks.cold import measure_cold
from benchmarks.scale import measure_advance, measure_concurrency, measure_existing_runs
from benchmarks.warm import measure_warm

__all__ = ["SECTIONS", "BenchmarkSettings"]

SECTIONS: Final = ("warm", "floor", "cold", "scale")


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
            cold_runs=cold_runs or (1 if quick else 7),
            existing=tuple(existing or ((0, 100) if quick else (0, 1000, 10000))),
            processes=tuple(processes or ((1, 2) if quick else (1, 8, 32))),
            machines=machines or (50 if quick else 2000),
            sections=tuple(section for section in SECTIONS if not only or section in only),
        )

    def as_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def run(self, console: Console) -> dict[str, Any]:
        """Run the selected sections; a key per section in the result."""
        results: dict[str, Any] = {}
        with_floor = "floor" in self.sections
        with_warm = "warm" in self.sections or with_floor
        if with_warm:
            label = "warm round trips and the floor" if with_floor else "warm round trips"
            with _step(console, label):
                results.update(
                    measure_warm(self.iterations, with_ours=with_warm, with_floor=with_floor)
                )
        if "cold" in self.sections:
            with _step(console, "cold starts"):
                results["cold_start"] = measure_cold(self.cold_runs)
        if "scale" in self.sections:
            scale: dict[str, Any] = {}
            with _step(console, "existing run directories"):
                scale["existing_runs"] = measure_existing_runs(self.existing, self.iterations)
            with _step(console, "concurrent processes"):
                scale["concurrency"] = measure_concurrency(self.processes)
            with _step(console, "bare machine advance()"):
                scale["advance"] = measure_advance(self.machines)
            results["scale"] = scale
        return results


class _step:
    """Prints what is being measured and how long it took (to the console, not stderr)."""

    def __init__(self, console: Console, label: str) -> None:
        self._console = console
        self._label = label
        self._t0 = 0.0

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()
        self._console.print(f"[dim]measuring {self._label}...[/dim]")

    def __exit__(self, *exc_info: object) -> None:
        elapsed = time.perf_counter() - self._t0
        self._console.print(f"[dim]  {self._label}: {elapsed:.1f} s[/dim]")
