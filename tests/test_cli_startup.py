"""The command's start-up: the quick sub-commands never import torch, and Ctrl-C before
a run starts is one line and exit 130. Every test runs the real console script."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import minimal_recipe, wait_for

COMMAND = str(Path(sys.executable).parent / "orchestrator-fsm")


def imported_modules(
    argv: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``orchestrator-fsm ARGV`` with ``-X importtime`` (its environment variable);
    the result and the names of every module the process imported."""
    env = dict(os.environ, PYTHONPROFILEIMPORTTIME="1", XDG_CACHE_HOME=str(cwd / "cache"))
    result = subprocess.run(
        [COMMAND, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )
    modules = set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s*(\S+)$", result.stderr, re.M))
    assert "orchestrator_fsm" in modules, result.stderr[-2000:]
    return result, modules


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A recipe and a finished run directory to validate and inspect."""
    from orchestrator_fsm import Config, RootOrchestrator

    root = tmp_path_factory.mktemp("startup")
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(root)), encoding="utf-8")
    with RootOrchestrator(Config.from_recipe(recipe)) as orch:
        pass
    assert orch.paths is not None
    return {"root": root, "recipe": recipe, "run": orch.paths.root}


QUICK_COMMANDS = {
    "--help": ["--help"],
    "--version": ["--version"],
    "no command": [],
    "run --help": ["run", "--help"],
    "validate": ["validate", "{recipe}"],
    "validate, a bad recipe": ["validate", "{recipe}", "--set", "training.seed=-1"],
    "inspect": ["inspect", "{run}"],
    "inspect --json": ["inspect", "{run}", "--json"],
    "diagram": ["diagram"],
    "diagram --format dot": ["diagram", "--format", "dot"],
    "diagram --output x.mmd": ["diagram", "--output", "{root}/x.mmd"],
    "runs": ["runs", "{root}/outputs"],
    "runs --json": ["runs", "{root}/outputs", "--json"],
    "report": ["report", "{run}", "--output", "{root}/page.html"],
}


@pytest.mark.parametrize("argv", QUICK_COMMANDS.values(), ids=QUICK_COMMANDS.keys())
def test_quick_commands_never_import_torch(workspace: dict[str, Path], argv: list[str]) -> None:
    argv = [word.format(**workspace) for word in argv]
    result, modules = imported_modules(argv, workspace["root"])
    assert result.returncode in (0, 2), result.stderr[-2000:]
    # Jinja2 (the report extra) only for the page that needs it.
    extras = {"torch", "numpy", "mlflow"} | (set() if argv[:1] == ["report"] else {"jinja2"})
    heavy = sorted(m for m in modules if m.split(".")[0] in extras)
    assert heavy == [], f"orchestrator-fsm {' '.join(argv)} imported {heavy[:5]}"


def test_run_does_import_torch_so_the_probe_can_see_it(workspace: dict[str, Path]) -> None:
    # The other tests are only worth something if the probe sees torch when it is there.
    entry = workspace["root"] / "noop.py"
    entry.write_text("def main(orch):\n    pass\n", encoding="utf-8")
    result, modules = imported_modules(
        ["run", str(workspace["recipe"]), "--entry", f"{entry}:main"], workspace["root"]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch" in modules


SLOW_IMPORT = """
import pathlib, time
pathlib.Path({marker!r}).write_text("importing")
import torch  # the first seconds of a real run: importing torch and the pipeline
time.sleep(120)

def main(orch):
    pass
"""


def _default_sigint() -> None:
    # A child started without job control inherits SIGINT as ignored; a terminal's
    # Ctrl-C reaches a process with the default disposition, as here.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run_entry(directory: Path, name: str, source: str) -> subprocess.Popen[str]:
    """``orchestrator-fsm run`` of the minimal recipe of ``directory`` and the entry
    ``name`` (``main`` of ``source``), written there; SIGINT as a terminal leaves it."""
    recipe = directory / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(directory)), encoding="utf-8")
    entry = directory / name
    entry.write_text(source, encoding="utf-8")
    return subprocess.Popen(
        [COMMAND, "run", str(recipe), "--entry", f"{entry}:main"],
        cwd=directory,
        env=dict(os.environ, XDG_CACHE_HOME=str(directory / "cache")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def _signalled_once_marked(
    proc: subprocess.Popen[str], marker: Path, signum: int
) -> tuple[str, str]:
    """Send ``signum`` to ``proc`` once its entry has written ``marker``; its output once
    it has exited (killed if it outlives 60 s or the wait fails)."""
    try:
        wait_for(lambda: [marker] if marker.exists() else [], proc)
        proc.send_signal(signum)
        return proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_ctrl_c_while_the_run_starts_up_is_one_line_and_exit_130(tmp_path: Path) -> None:
    marker = tmp_path / "importing"
    proc = _run_entry(tmp_path, "slow_import.py", SLOW_IMPORT.format(marker=str(marker)))
    out, err = _signalled_once_marked(proc, marker, signal.SIGINT)
    assert proc.returncode == 130, err
    assert err.splitlines() == ["orchestrator-fsm: interrupted (SIGINT) before the run started"]
    assert "Traceback" not in out
    assert not (tmp_path / "outputs").exists()


SLOW_TO_FINALISE = """
import pathlib, time


class SlowToFinalise:
    # A module-level object whose __del__ does slow work (a pool or a writer closing):
    # Python runs it as the process exits, after its own signal handling has ended.
    def __init__(self):
        self.say, self.sleep = pathlib.Path({marker!r}).write_text, time.sleep

    def __del__(self):
        self.say("finalising")
        self.sleep(1.5)


keeper = SlowToFinalise()


def main(orch):
    pass
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=lambda signum: signum.name
)
def test_a_signal_while_python_finalises_the_command_leaves_its_exit_code(
    tmp_path: Path, signum: signal.Signals
) -> None:
    # Once the last exit handler has run, nothing is left to cut short: a scheduler's
    # late signal must not turn the code the run earned into death by that signal.
    marker = tmp_path / "finalising"
    proc = _run_entry(tmp_path, "slow_exit.py", SLOW_TO_FINALISE.format(marker=str(marker)))
    out, err = _signalled_once_marked(proc, marker, signum)
    assert proc.returncode == 0, err
    assert "status: completed" in out, out
    assert "Traceback" not in out + err


LIVE_ENTRY = """
import pathlib, time

def main(orch):
    pathlib.Path({marker!r}).write_text("live")
    time.sleep(120)
"""
BEFORE_THE_RUN = "orchestrator-fsm: interrupted (SIGINT) before the run started"
CLEANED_UP = "interrupted (SIGINT); the run was cleaned up"


def _owns_its_signals(pid: int) -> bool:
    """Whether process ``pid`` has taken over SIGTERM: the command's first act
    (orchestrator_fsm._startup), which the interpreter's own start-up never does."""
    try:
        status = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return False
    (caught,) = re.findall(r"^SigCgt:\s+([0-9a-f]+)$", status, re.M)
    return bool(int(caught, 16) & (1 << (signal.SIGTERM - 1)))


def _start_run(directory: Path) -> tuple[subprocess.Popen[str], Path]:
    """``orchestrator-fsm run`` of a recipe and an entry that waits once live, both in
    ``directory`` (its own outputs and lock); the process, once it owns its signals,
    and the file the entry writes when the run is live."""
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / "live"
    proc = _run_entry(directory, "live_entry.py", LIVE_ENTRY.format(marker=str(marker)))
    while not _owns_its_signals(proc.pid):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.0005)
    return proc, marker


def _interrupted_as_promised(proc: subprocess.Popen[str], directory: Path) -> str | None:
    """What is wrong with how ``proc``, just sent SIGINT, ended; None when nothing."""
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return f"still running 120s after the signal\nstdout:\n{out}\nstderr:\n{err}"
    said = [line for line in err.splitlines() if not line.startswith("[rank")]
    statuses = [
        json.loads(path.read_text(encoding="utf-8"))["status"]
        for path in (directory / "outputs").glob("*/run.json")
    ]
    if (
        proc.returncode != 130
        or said not in ([BEFORE_THE_RUN], [CLEANED_UP])
        or any(word in out + err for word in ("Traceback", "ImportError", "RecursionError"))
        or any(status != "interrupted" for status in statuses)
    ):
        return f"exit {proc.returncode}, run.json {statuses}\nstdout:\n{out}\nstderr:\n{err}"
    return None


@pytest.mark.slow
def test_ctrl_c_at_100_points_of_start_up_is_always_one_line_and_exit_130(
    tmp_path: Path,
) -> None:
    # How long start-up takes here, from the command's first act to the entry running.
    proc, marker = _start_run(tmp_path / "measure")
    started = time.monotonic()
    wait_for(lambda: [marker] if marker.exists() else [], proc)
    start_up_s = time.monotonic() - started
    proc.send_signal(signal.SIGINT)
    assert _interrupted_as_promised(proc, tmp_path / "measure") is None

    def interrupt_after(index: int) -> str | None:
        directory = tmp_path / str(index)
        proc, _ = _start_run(directory)
        time.sleep(start_up_s * index / 99)
        proc.send_signal(signal.SIGINT)
        return _interrupted_as_promised(proc, directory)

    # Four at a time: the delays are measured from each process's own start.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        problems = {i: p for i, p in enumerate(pool.map(interrupt_after, range(100))) if p}
    assert not problems, "\n".join(
        f"after {start_up_s * i / 99:.3f}s of {start_up_s:.3f}s: {problem}"
        for i, problem in problems.items()
    )


SWALLOWING = """
import os, pathlib, signal, time, weakref


def swallow_a_ctrl_c():
    # Ctrl-C arriving while a weakref callback runs (importlib runs one at the end of
    # nearly every import): Python prints "Exception ignored" and drops the interrupt.
    class Thing:
        pass

    def callback(ref):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100000):
            pass

    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing
    time.sleep(3)  # the interrupt comes back within this
    pathlib.Path({marker!r}).write_text("went on")

{where}

def main(orch):
    {in_main}
"""


@pytest.mark.parametrize(
    ("where", "said"),
    [("import", BEFORE_THE_RUN), ("main", CLEANED_UP)],
    ids=["while importing the entry", "while the run is live"],
)
def test_a_ctrl_c_that_python_swallows_still_interrupts_the_command(
    tmp_path: Path, where: str, said: str
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(tmp_path)), encoding="utf-8")
    marker = tmp_path / "went_on"
    entry = tmp_path / "swallowing.py"
    entry.write_text(
        SWALLOWING.format(
            marker=str(marker),
            where="swallow_a_ctrl_c()" if where == "import" else "",
            in_main="swallow_a_ctrl_c()" if where == "main" else "pass",
        ),
        encoding="utf-8",
    )
    result = subprocess.run(
        [COMMAND, "run", str(recipe), "--entry", f"{entry}:main"],
        cwd=tmp_path,
        env=dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_default_sigint,
    )
    assert result.returncode == 130, result.stderr
    assert [line for line in result.stderr.splitlines() if not line.startswith("[rank")] == [said]
    assert not marker.exists()
