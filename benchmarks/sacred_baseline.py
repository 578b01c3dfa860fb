"""Sacred as a baseline: the same recipe, run warm in the same git checkout.

Sacred (https://github.com/IDSIA/sacred) is what many experiments use to record a run;
with its ``FileStorageObserver`` a run leaves ``config.json``, ``run.json`` (host,
experiment, git commit and dirty flag, dependencies, start and stop), ``cout.txt``
and ``metrics.json`` in a numbered folder. The section times, alternating in one
process, after a warm-up:

- **ours**: ``RootOrchestrator(cfg)``, ``__enter__``, ``log_environment_report()``,
  ``__exit__`` with the orchard recipe (relaxed), the working directory a small git
  checkout with one modified file (``Sandbox.make_checkout``), with per-step medians;
- **Sacred**: ``ex.run()`` of an experiment whose module lives in that checkout (so
  its git info is the checkout's), with the recipe as its config, a
  ``FileStorageObserver`` and ``--capture sys`` (Python-level capture of the output,
  as ours; Sacred's default ``fd`` starts two ``tee`` processes per run);
- **Sacred + the manifest by hand**: the same, with the experiment's main function
  also doing what ours records and Sacred does not, by the floor's hand-written code
  (``floor.py``): the config as YAML, the installed distributions (listed once per
  process, as Sacred lists its dependencies once per experiment) and the checkout's
  git state (``rev-parse``, ``status``, ``remote -v``, ``diff HEAD``), written by
  temporary file, fsync and rename into the Sacred run's folder.

Sacred reads git and the imported packages once, when the experiment is created, and
writes without fsync; ours records both per run and fsyncs every file it keeps. The
ratio that answers "does the framework cost more than Sacred" is ours against Sacred
with the manifest by hand.

Skipped (``None``) when Sacred is not installed (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from benchmarks._common import Sandbox, quiet_stderr, summarize
from benchmarks.floor import FloorRun, _git_state, _write_atomic
from benchmarks.warm import round_trip
from orchestrator_fsm import Config

__all__ = ["measure_sacred"]

_WARMUP: Final = 3

_EXPERIMENT: Final = """
from sacred import Experiment

ex = Experiment("orchard_like_mini_cnn", save_git_info=True)
by_hand = []


@ex.main
def main(_run):
    for work in by_hand:
        work(_run.observers[0].dir)
"""


def _sacred_available() -> bool:
    return importlib.util.find_spec("sacred") is not None


def _load_experiment(path: Path) -> types.ModuleType:
    """Import the experiment module at ``path`` (Sacred finds its sources and git
    checkout from the module that creates the experiment)."""
    spec = importlib.util.spec_from_file_location("bench_sacred_experiment", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sacred 0.8 imports the deprecated pkg_resources
        spec.loader.exec_module(module)
    return module


def _manifest_by_hand(floor: FloorRun) -> Callable[[str], None]:
    """Write what ours records and Sacred does not into ``folder``: the config as YAML,
    the installed distributions (listed once, as Sacred gathers its dependencies once
    per experiment and ours keeps its listing while ``sys.path`` is unchanged) and the
    checkout's git state (the floor's code: four gits, one after another)."""
    from importlib import metadata

    listing = []
    for dist in metadata.distributions():
        fields = dist.metadata
        listing.append(f"{fields['Name']}=={fields['Version']}")
    requirements = "\n".join(sorted(listing)).encode()

    def work(folder: str) -> None:
        where = Path(folder)
        _write_atomic(where / "config.yaml", yaml.safe_dump(floor.config).encode())
        _write_atomic(where / "requirements.txt", requirements)
        _git_state(floor, where)

    return work


def _creation_cpu_us(folder: Path, count: int = 40) -> float:
    """CPU microseconds this process spends creating one empty file in ``folder``
    (mean of ``count``): what the file system charges for each new file or folder
    here, now. On ext4 without a journal it grows with the files deleted nearby in
    the last minutes (the kernel passes over their recently freed inodes), so it says
    how much of a round trip's CPU its new files and folders are at the time."""
    folder.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for index in range(count):
        os.close(os.open(folder / f"f{index}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    after = resource.getrusage(resource.RUSAGE_SELF)
    spent = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return round(spent / count * 1e6, 1)


def _cpu_seconds() -> float:
    # getrusage, not os.times: microseconds rather than 10 ms clock ticks.
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextlib.contextmanager
def _cpu_time(into: list[float]) -> Iterator[None]:
    """Append the CPU seconds of the block: this process's and its waited-for children's
    (git), which another process's load on the machine does not inflate as it does
    wall time."""
    before = _cpu_seconds()
    yield
    into.append(_cpu_seconds() - before)


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    # Sacred's console log lines and captured output: to /dev/null, as ours go.
    with open("/dev/null", "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        yield


def measure_sacred(iterations: int) -> dict[str, Any] | None:
    """Warm round trips of ours, Sacred, and Sacred with the manifest by hand; ``None``
    when Sacred is not installed."""
    if not _sacred_available():
        return None
    import logging

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sacred 0.8 imports the deprecated pkg_resources
        import sacred as sacred_package
        from sacred.observers import FileStorageObserver

    with contextlib.ExitStack() as stack, Sandbox("sacred") as box, quiet_stderr(), _quiet_stdout():
        checkout = box.make_checkout()
        recipe = box.orchard_recipe("sacred", strict=False)
        cfg = Config.from_recipe(recipe)
        data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
        floor = FloorRun(
            data, output_dir=box.root / "floor-outputs", lock_path=box.root / "floor.lock"
        )
        (checkout / "experiment.py").write_text(_EXPERIMENT, encoding="utf-8")
        module = _load_experiment(checkout / "experiment.py")
        ex = module.ex
        ex.add_config(data)
        ex.observers.append(FileStorageObserver(str(box.root / "sacred-runs")))
        # Sacred's own console logging (its default format, INFO), to /dev/null as ours.
        ex.logger = logging.getLogger("bench_sacred")
        sink = logging.StreamHandler(stack.enter_context(open(os.devnull, "w")))
        sink.setFormatter(logging.Formatter("%(levelname)s - %(name)s - %(message)s"))
        ex.logger.addHandler(sink)
        stack.callback(ex.logger.removeHandler, sink)
        ex.logger.setLevel(logging.INFO)
        ex.logger.propagate = False
        by_hand = _manifest_by_hand(floor)

        def sacred_run(with_manifest: bool) -> float:
            module.by_hand[:] = [by_hand] if with_manifest else []
            t0 = time.perf_counter()
            ex.run(options={"--capture": "sys"})
            return time.perf_counter() - t0

        for _ in range(_WARMUP):
            round_trip(cfg)
            sacred_run(False)
            sacred_run(True)
        creation_before = _creation_cpu_us(box.root / "probe-before")
        ours: list[float] = []
        sacred: list[float] = []
        sacred_manifest: list[float] = []
        cpu: dict[str, list[float]] = {"ours": [], "sacred": [], "sacred_with_manifest": []}
        steps: dict[str, list[float]] = {}
        for _ in range(iterations):
            with _cpu_time(cpu["ours"]):
                elapsed, per_step = round_trip(cfg)
            ours.append(elapsed)
            for step, seconds in per_step.items():
                steps.setdefault(step, []).append(seconds)
            with _cpu_time(cpu["sacred"]):
                sacred.append(sacred_run(False))
            with _cpu_time(cpu["sacred_with_manifest"]):
                sacred_manifest.append(sacred_run(True))
        creation_after = _creation_cpu_us(box.root / "probe-after")
        sys.modules.pop("bench_sacred_experiment", None)

    return {
        "cwd": "a git checkout (20 committed files, one modified)",
        "recipe": "tests/recipes/orchard_like_mini_cnn.yaml (reproducible: false)",
        "sacred_version": sacred_package.__version__,
        "ours_ms": summarize(ours),
        "sacred_ms": summarize(sacred),
        "sacred_with_manifest_ms": summarize(sacred_manifest),
        # Means: the kernel accounts CPU time in scheduler ticks, so one round trip's
        # figure is coarse; the mean over many is not.
        "cpu_mean_ms": {kind: round(statistics.fmean(v) * 1000, 2) for kind, v in cpu.items()},
        "ratio_median": round(statistics.median(ours) / statistics.median(sacred_manifest), 3),
        "cpu_ratio_mean": round(
            statistics.fmean(cpu["ours"]) / statistics.fmean(cpu["sacred_with_manifest"]), 3
        ),
        "ratio_to_bare_sacred_median": round(
            statistics.median(ours) / statistics.median(sacred), 3
        ),
        # New files and folders per round trip (strace): ours 20, Sacred + the
        # manifest 9, bare Sacred 5; what one costs here, before and after the rounds.
        "file_creation_cpu_us": [creation_before, creation_after],
        "step_median_ms": {
            step: round(statistics.median(values) * 1000, 3) for step, values in steps.items()
        },
    }
