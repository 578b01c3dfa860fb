"""Faults injected into real child processes: every step and the pipeline, each fault.

Each case runs a real Python child that wraps one entry of ``phases.steps.STEPS`` in
place before it builds its ``RootOrchestrator`` (or, for the pipeline, faults inside
the with-block), with a real output directory and a real lock file under ``tmp_path``.
The parent then checks what a user would rely on afterwards: the lock is free, every
record file parses, no temporary file is left, the recorded status tells the truth,
and (for faults the child survives) the process carries no trace of the run.

What is acceptable after SIGKILL: the lock is free (the kernel dropped the flock) even
though the lock file still names the dead holder; ``run.json`` says ``running`` and
readers infer ``crashed``; a torn last line of ``lifecycle.jsonl`` would be tolerated.
Temporary files of atomic writes would be tolerated too, but our kills come from
inside a step, never during a write, so none are expected and none are allowed.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli_command, minimal_recipe, run_dirs

from orchestrator_fsm.config import Config
from orchestrator_fsm.lifecycle.record import (
    PIPELINE_STEP,
    infer_status,
    read_run,
)
from orchestrator_fsm.lifecycle.table import JOIN_STEP, advance_path, table_steps
from orchestrator_fsm.phases.lock import read_lock_holder, resolve_lock_path
from orchestrator_fsm.phases.steps import STEPS

# Its module-scoped fixtures are costly (one child per step and fault): one xdist
# worker runs the whole module so they are made once, not once per worker (conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("test_faults")]

#: Every step of the table that does work on rank 0 (a single process), in table order,
#: then the user's with-block. (``join`` is the other ranks' phase 3: tests/test_jobs.py.)
RANK0_STEPS: tuple[str, ...] = tuple(step for step in table_steps() if step != JOIN_STEP)
TARGETS: tuple[str, ...] = (*RANK0_STEPS, PIPELINE_STEP)
FAULTS = ("exception", "keyboard_interrupt", "sigterm", "sigkill")
#: The status ``run.json`` ends in after each fault a process survives.
STATUS_AFTER = {
    "exception": "failed",
    "keyboard_interrupt": "interrupted",
    "sigterm": "interrupted",
}
#: What the CLI exits with after each fault (SIGKILL: the child is killed, rc -9).
CLI_EXIT = {"exception": 1, "keyboard_interrupt": 130, "sigterm": 128 + signal.SIGTERM}
CHILD_TIMEOUT_S = 120
PLAN_ENV = "ORCHESTRATOR_FSM_TEST_FAULT_PLAN"


def _steps_before_run_dir() -> tuple[str, ...]:
    # The steps whose fault (fired as the step starts) comes before the run directory
    # exists: those on rank 0's path up to and including the one reaching PROVISIONED.
    path = advance_path(is_main_process=True)
    order = list(RANK0_STEPS)
    provisioned = path.index(next(s for s in path if s.value == "provisioned"))
    return tuple(order[:provisioned])


BEFORE_RUN_DIR = _steps_before_run_dir()

# The child side, written next to each case as fault_child.py. As a script it runs the
# library cases of a plan (argv[1], JSON); imported by sitecustomize.py it arms the plan
# in $ORCHESTRATOR_FSM_TEST_FAULT_PLAN inside a CLI process.
CHILD = textwrap.dedent(
    r'''
    import json, logging, os, signal, sys, threading, time
    from pathlib import Path

    PLAN_ENV = "ORCHESTRATOR_FSM_TEST_FAULT_PLAN"
    WATCHED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    SENT = []


    def fire(fault):
        if fault == "exception":
            raise RuntimeError("injected fault")
        if fault == "keyboard_interrupt":
            raise KeyboardInterrupt("injected fault")
        SENT.append(fault)
        os.kill(os.getpid(), getattr(signal, fault.upper()))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.001)
        raise AssertionError(f"{fault} sent to self was never acted on")


    def arm(target, fault, position="before"):
        """Wrap STEPS[target] in place so ``fault`` fires when it runs; the undo."""
        from orchestrator_fsm.phases.steps import STEPS

        real = STEPS[target]

        def faulty(run):
            if position == "before":
                fire(fault)
            undo = real(run)
            if position == "after":
                fire(fault)
            return undo

        STEPS[target] = faulty
        return lambda: STEPS.__setitem__(target, real)


    # Where each step's work ends: the dependency it calls last. A "late" fault fires
    # once that dependency has done its work, so the step has something to undo.
    LATE = {
        "seed": ("orchestrator_fsm.orchestrator", None, "set_seed"),
        "configure_runtime": ("orchestrator_fsm.orchestrator", None, "configure_system_libraries"),
        "provision": ("orchestrator_fsm.layout", "RunPaths", "create"),
        "init_logging": ("orchestrator_fsm.phases.logging", "Logger", "setup"),
        "persist_manifest": ("orchestrator_fsm.phases.manifest", "AuditSaver", "dump_git_info"),
        "acquire_lock": ("orchestrator_fsm.phases.lock", "InfrastructureManager",
                         "prepare_environment"),
        "resolve_device": ("orchestrator_fsm.orchestrator", None, "to_device_obj"),
        "report": ("orchestrator_fsm.phases.report", "Reporter", "log_initial_status"),
    }


    def arm_late(target, fault):
        """Make the last dependency of ``target`` do its work, then fault; the undo."""
        import importlib

        module_name, class_name, attr = LATE[target]
        owner = importlib.import_module(module_name)
        if class_name is not None:
            owner = getattr(owner, class_name)
        raw = owner.__dict__[attr] if class_name is not None else getattr(owner, attr)
        real = getattr(owner, attr)

        def done_then_fault(*args, **kwargs):
            result = real(*args, **kwargs)
            fire(fault)
            return result

        if isinstance(raw, classmethod):
            wrapped = classmethod(lambda cls, *a, **k: done_then_fault(*a, **k))
        elif isinstance(raw, staticmethod):
            wrapped = staticmethod(done_then_fault)
        elif class_name is not None:
            wrapped = lambda self, *a, **k: (real_unbound(self, *a, **k), fire(fault))[0]
            real_unbound = raw
        else:
            wrapped = done_then_fault
        setattr(owner, attr, wrapped)
        return lambda: setattr(owner, attr, raw)


    def double_sigterm(gap_ms, started=None):
        """One SIGTERM now, a second one ``gap_ms`` later, both sent from a thread
        (added to ``started``), so that each is counted exactly when it is sent: the
        main thread, where the handlers run, may be interrupted at any bytecode."""
        first_sent = threading.Event()

        def send_both():
            SENT.append("sigterm")
            os.kill(os.getpid(), signal.SIGTERM)
            first_sent.set()
            time.sleep(gap_ms / 1000)
            SENT.append("sigterm")
            os.kill(os.getpid(), signal.SIGTERM)

        thread = threading.Thread(target=send_both, daemon=True)
        if started is not None:
            started.append(thread)
        thread.start()
        first_sent.wait()  # the first signal is raised (or held) here at the latest
        return thread


    def arm_release_race(gap_ms):
        """Two SIGTERMs, the first while the lock is being released."""
        from orchestrator_fsm.phases.lock import InfrastructureManager

        real = InfrastructureManager.release_resources
        threads = []

        def release(self, cfg, logger=None):
            if self.held:
                double_sigterm(gap_ms, threads)
            return real(self, cfg, logger=logger)

        InfrastructureManager.release_resources = release

        def disarm():
            InfrastructureManager.release_resources = real

        return threads, disarm


    def arm_from_env():
        plan = os.environ.get(PLAN_ENV)
        if not plan:
            return
        plan = json.loads(plan)
        if "release_race_gap_ms" in plan:
            arm_release_race(plan["release_race_gap_ms"])
        elif plan.get("sigterm_while_reporting"):
            from orchestrator_fsm.orchestrator import RootOrchestrator

            read_record = RootOrchestrator.record.fget

            def signalled_while_reporting(orch):
                # The command reads the record once, when it reports the run's outcome.
                SENT.append("sigterm")
                os.kill(os.getpid(), signal.SIGTERM)
                return read_record(orch)

            RootOrchestrator.record = property(signalled_while_reporting)
        else:
            arm(plan["target"], plan["fault"], plan.get("position", "before"))


    def lock_fds(lock_path):
        found = []
        for name in os.listdir("/proc/self/fd"):
            try:
                if os.readlink(f"/proc/self/fd/{name}") == str(lock_path):
                    found.append(int(name))
            except OSError:
                continue
        return found


    def lock_is_free(lock_path):
        # flock conflicts between open file descriptions, even in one process.
        if not lock_path.exists():
            return True
        fd = os.open(lock_path, os.O_RDONLY)
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
        return True


    def snapshot():
        package = logging.getLogger("orchestrator_fsm")
        root = logging.getLogger()
        return {
            "signals": {int(s): signal.getsignal(s) for s in WATCHED},
            "root_handlers": list(root.handlers),
            "package_handlers": list(package.handlers),
            "levels": (root.level, package.level, package.propagate),
            "environ": dict(os.environ),
        }


    def leaks(before, lock_path):
        after = snapshot()
        found = []
        for key in before:
            if before[key] != after[key]:
                found.append(f"{key}: {before[key]!r} -> {after[key]!r}"[:300])
        fds = lock_fds(lock_path)
        if fds:
            found.append(f"open fds on the lock file: {fds}")
        if not lock_is_free(lock_path):
            found.append("the lock is still held")
        return found


    def run_once(cfg, target=None, fault=None, body=None):
        """One with-block run; (exception caught or None, run root or None)."""
        from orchestrator_fsm import RootOrchestrator

        orch = None
        try:
            orch = RootOrchestrator(cfg)
            with orch:
                orch.log_environment_report()
                if target == "pipeline":
                    fire(fault)
                if body is not None:
                    body()
        except BaseException as exc:
            return exc, orch.paths.root if orch is not None and orch.paths else None
        return None, orch.paths.root if orch.paths else None


    def library_cases(plan):
        from orchestrator_fsm import Config, read_run
        from orchestrator_fsm.phases.lock import resolve_lock_path

        for case in plan["cases"]:
            cfg = Config.from_dict(case["recipe"])
            lock_path = resolve_lock_path(cfg).resolve()
            before = snapshot()
            disarm = lambda: None
            if case.get("position") == "late":
                disarm = arm_late(case["target"], case["fault"])
            elif case["target"] != "pipeline":
                disarm = arm(case["target"], case["fault"])
            try:
                caught, _ = run_once(cfg, case["target"], case["fault"])
            finally:
                disarm()
            verdict = {
                "case": case["name"],
                "caught": type(caught).__name__ if caught else None,
                "message": str(caught) if caught else None,
                "leaks": leaks(before, lock_path),
            }
            # A second run in the same process, same lock, succeeds and leaks nothing.
            again = Config.from_dict(case["again"])
            before = snapshot()
            caught, root = run_once(again)
            verdict["again"] = {
                "caught": repr(caught) if caught else None,
                "status": read_run(root).status if root else None,
                "leaks": leaks(before, lock_path),
            }
            print("VERDICT " + json.dumps(verdict), flush=True)


    def library_race(plan):
        """Double SIGTERMs, iteration after iteration, in one process whose own SIGTERM
        handler (counting) is what the run's guard chains and then hands back."""
        from orchestrator_fsm import Config, read_run
        from orchestrator_fsm.phases.lock import resolve_lock_path

        received = []
        signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
        for case in plan["cases"]:
            cfg = Config.from_dict(case["recipe"])
            lock_path = resolve_lock_path(cfg).resolve()
            before = snapshot()
            threads, disarm = [], lambda: None
            gap = case["gap_ms"]

            def in_pipeline():
                double_sigterm(gap, threads)
                time.sleep(10)
                raise AssertionError("the first SIGTERM did not end the pipeline")

            if case["moment"] == "cleanup":
                threads, disarm = arm_release_race(gap)
            caught, root = run_once(cfg, body=in_pipeline if case["moment"] == "pipeline" else None)
            for thread in threads:
                thread.join()
            time.sleep(0.03)  # let a late second signal reach the counting handler here
            disarm()
            record = read_run(root) if root else None
            print("VERDICT " + json.dumps({
                "case": case["name"],
                "caught": type(caught).__name__ if caught else None,
                "message": str(caught) if caught else None,
                "status": record.status if record else None,
                "state": record.state if record else None,
                "leaks": [x for x in leaks(before, lock_path) if not x.startswith("signals")],
            }), flush=True)
        counts = {"sent": len(SENT), "received_by_own_handler": len(received)}
        print("SIGNALS " + json.dumps(counts), flush=True)


    if __name__ == "__main__":
        plan = json.loads(sys.argv[1])
        if plan["mode"] == "cases":
            library_cases(plan)
        elif plan["mode"] == "race":
            library_race(plan)
    '''
)

ENTRIES = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import fault_child


    def calm(orch):
        orch.log_environment_report()


    def fault_exception(orch):
        fault_child.fire("exception")


    def fault_keyboard_interrupt(orch):
        fault_child.fire("keyboard_interrupt")


    def fault_sigterm(orch):
        fault_child.fire("sigterm")


    def fault_sigkill(orch):
        fault_child.fire("sigkill")


    def wait_to_be_signalled(orch):
        (orch.paths.root / "entered").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(0.001)
        raise AssertionError("never signalled")


    def hold_until_released(orch):
        release = Path(os.environ["ORCHESTRATOR_FSM_TEST_RELEASE"])
        deadline = time.monotonic() + 90
        while not release.exists():
            assert time.monotonic() < deadline, "never released"
            time.sleep(0.02)
    """
)


# -- helpers ------------------------------------------------------------------------------


def write_child(directory: Path) -> Path:
    """fault_child.py, a sitecustomize.py arming it in CLI children, and entries.py."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fault_child.py").write_text(CHILD, encoding="utf-8")
    (directory / "sitecustomize.py").write_text(
        "import fault_child\nfault_child.arm_from_env()\n", encoding="utf-8"
    )
    (directory / "entries.py").write_text(ENTRIES, encoding="utf-8")
    return directory


def case_recipe(case_dir: Path, **sections: Any) -> dict[str, Any]:
    recipe = minimal_recipe(case_dir, **sections)
    recipe["telemetry"]["log_level"] = "WARNING"
    return recipe


def child_env(code_dir: Path, plan: dict[str, Any] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != PLAN_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(code_dir), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env["XDG_CACHE_HOME"] = str(code_dir / "cache")
    env["COLUMNS"] = "250"
    if plan is not None:
        env[PLAN_ENV] = json.dumps(plan)
    return env


def verdicts(stdout: str, prefix: str = "VERDICT ") -> dict[str, dict[str, Any]]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith(prefix):
            data = json.loads(line[len(prefix) :])
            found[data["case"]] = data
    return found


def tagged(stdout: str, prefix: str) -> dict[str, Any]:
    (line,) = [line for line in stdout.splitlines() if line.startswith(prefix)]
    data: dict[str, Any] = json.loads(line[len(prefix) :])
    return data


def lock_is_free(path: Path) -> bool:
    """Whether an exclusive flock on ``path`` can be taken now (without waiting)."""
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def temp_files(directory: Path) -> list[Path]:
    # _fs.atomic_write_bytes names its temporary files ".<name>.<random>.tmp".
    return sorted(p for p in directory.rglob(".*.tmp")) if directory.exists() else []


def unparsable_files(directory: Path, *, torn_last_line_ok: bool) -> list[str]:
    """Every .json/.jsonl/.yaml under ``directory`` that does not parse, with why."""
    problems = []
    for path in sorted(directory.rglob("*")):
        try:
            if path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
            elif path.suffix in (".yaml", ".yml"):
                yaml.safe_load(path.read_text(encoding="utf-8"))
            elif path.suffix == ".jsonl":
                lines = path.read_text(encoding="utf-8").split("\n")
                if lines and lines[-1] == "":
                    lines.pop()
                elif torn_last_line_ok and lines:
                    lines.pop()  # written up to a kill, never finished
                for line in lines:
                    json.loads(line)
        except (ValueError, yaml.YAMLError) as exc:
            problems.append(f"{path}: {exc}")
    return problems


def check_disk(case_dir: Path, recipe: dict[str, Any], *, killed: bool) -> None:
    """What every case leaves: a free lock, parsable records, no temporary files."""
    lock_path = resolve_lock_path(Config.from_dict(recipe))
    assert lock_is_free(lock_path), f"{lock_path} is still locked"
    if not killed:
        assert read_lock_holder(lock_path) is None, "the released lock file names a holder"
    assert unparsable_files(case_dir, torn_last_line_ok=killed) == []
    assert temp_files(case_dir) == []


def check_record(root: Path, target: str, fault: str) -> None:
    """``run.json`` tells how the run ended, naming the faulted step (and signal)."""
    record = read_run(root)
    assert record.status == STATUS_AFTER[fault], record
    assert record.state in ("failed", "cleaned")
    assert record.error is not None
    assert record.error.step == target
    if fault == "sigterm":
        assert (record.error.type, record.error.message) == ("RunInterrupted", "SIGTERM")
    elif fault == "keyboard_interrupt":
        assert record.error.type == "KeyboardInterrupt"
    else:
        assert "injected fault" in record.error.message


def check_crashed(case_dir: Path, target: str) -> None:
    dirs = run_dirs(case_dir / "outputs")
    if target in BEFORE_RUN_DIR:
        assert dirs == [], f"a fault before provisioning left {dirs}"
        return
    (root,) = dirs
    record = read_run(root)
    assert record.status == "running"
    assert infer_status(record) == "crashed"


#: Faults injected, signals sent and runs launched by this module's tests so far
#: (conftest.py prints it at the end of the session).
TALLY: dict[str, int] = {}


def tally(**counts: int) -> None:
    for key, value in counts.items():
        TALLY[key] = TALLY.get(key, 0) + int(value)


@pytest.fixture(scope="module")
def code_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_child(tmp_path_factory.mktemp("fault-child"))


def run_child(
    code_dir: Path, plan: dict[str, Any], env_plan: dict[str, Any] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(code_dir / "fault_child.py"), json.dumps(plan)],
        env=child_env(code_dir, env_plan),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )


def start_run(
    code_dir: Path,
    recipe: dict[str, Any],
    case_dir: Path,
    function: str,
    plan: dict[str, Any] | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """``python -m orchestrator_fsm run RECIPE --entry entries.py:FUNCTION``, started."""
    case_dir.mkdir(parents=True, exist_ok=True)
    recipe_path = case_dir / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    env = child_env(code_dir, plan) | (extra_env or {})
    return subprocess.Popen(
        cli_command("run", str(recipe_path), "--entry", f"{code_dir / 'entries.py'}:{function}"),
        cwd=case_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = CHILD_TIMEOUT_S) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# -- 1. the fault matrix in library use ----------------------------------------------------


def test_the_matrix_covers_every_step_of_the_table() -> None:
    assert set(table_steps()) == set(STEPS)
    assert set(TARGETS) == set(STEPS) - {JOIN_STEP} | {PIPELINE_STEP}
    assert BEFORE_RUN_DIR == ("seed", "configure_runtime", "provision")


#: (target, fault, position): "start" fires as the step starts (the STEPS entry is
#: wrapped); "late" once the step's last dependency has done its work (see LATE).
LIBRARY_CASES = [
    (target, fault, position)
    for target in TARGETS
    for position in ("start", "late")
    for fault in STATUS_AFTER
    if position == "start" or target != PIPELINE_STEP
]


@pytest.fixture(scope="module")
def library_verdicts(
    code_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One child per target runs the exception, KeyboardInterrupt and SIGTERM cases in
    turn (each followed by a clean run in the same process); the verdicts and dirs."""
    base = tmp_path_factory.mktemp("library-matrix")
    cases_by_target: dict[str, list[dict[str, Any]]] = {}
    for target, fault, position in LIBRARY_CASES:
        name = f"{target}-{fault}-{position}"
        case_dir = base / name
        recipe = case_recipe(case_dir)
        again = case_recipe(case_dir / "again")
        again["infrastructure"] = recipe["infrastructure"]
        cases_by_target.setdefault(target, []).append(
            {
                "name": name,
                "target": target,
                "fault": fault,
                "position": position,
                "recipe": recipe,
                "again": again,
                "dir": str(case_dir),
            }
        )

    def one_child(target: str) -> tuple[str, subprocess.CompletedProcess[str]]:
        return target, run_child(code_dir, {"mode": "cases", "cases": cases_by_target[target]})

    results: dict[str, Any] = {"dirs": {}, "verdicts": {}, "children": {}}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for target, proc in pool.map(one_child, TARGETS):
            results["children"][target] = proc
            results["verdicts"].update(verdicts(proc.stdout))
    for cases in cases_by_target.values():
        for case in cases:
            results["dirs"][case["name"]] = (Path(case["dir"]), case["recipe"])
    yield results


@pytest.mark.parametrize(("target", "fault", "position"), LIBRARY_CASES)
def test_library_fault_leaves_a_true_record_and_no_trace(
    library_verdicts: dict[str, Any], target: str, fault: str, position: str
) -> None:
    name = f"{target}-{fault}-{position}"
    child = library_verdicts["children"][target]
    assert child.returncode == 0, child.stderr[-3000:]
    verdict = library_verdicts["verdicts"][name]
    tally(faults=1, signals=fault == "sigterm", runs=2)
    expected = {
        "exception": ("RuntimeError", "InfrastructureError", "DeviceError"),
        "keyboard_interrupt": ("KeyboardInterrupt",),
        "sigterm": ("RunInterrupted",),
    }[fault]
    assert verdict["caught"] in expected, verdict
    assert verdict["leaks"] == [], verdict
    assert verdict["again"] == {"caught": None, "status": "completed", "leaks": []}, verdict

    case_dir, recipe = library_verdicts["dirs"][name]
    check_disk(case_dir, recipe, killed=False)
    dirs = run_dirs(case_dir / "outputs")
    if target in BEFORE_RUN_DIR and not (position == "late" and target == "provision"):
        assert dirs == []
    else:
        (root,) = dirs
        check_record(root, target, fault)


def in_parallel(work: Any, items: Sequence[Any], workers: int = 2) -> dict[Any, Any]:
    """``work(item)`` for every item, ``workers`` child processes at a time."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(items, pool.map(work, items), strict=True))


@pytest.fixture(scope="module")
def sigkill_results(code_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    base = tmp_path_factory.mktemp("library-sigkill")

    def one(target: str) -> tuple[Path, dict[str, Any], subprocess.CompletedProcess[str]]:
        case_dir = base / target
        recipe = case_recipe(case_dir)
        case = {"name": target, "target": target, "fault": "sigkill", "recipe": recipe}
        case["again"] = recipe
        return case_dir, recipe, run_child(code_dir, {"mode": "cases", "cases": [case]})

    return in_parallel(one, TARGETS)


@pytest.mark.parametrize("target", TARGETS)
def test_library_sigkill_leaves_a_crashed_record_and_a_free_lock(
    sigkill_results: dict[Any, Any], target: str
) -> None:
    case_dir, recipe, proc = sigkill_results[target]
    tally(faults=1, signals=1, runs=1)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    check_disk(case_dir, recipe, killed=True)
    check_crashed(case_dir, target)


# -- 1b. the same faults through the CLI ---------------------------------------------------

#: One step before the run directory exists, the lock, the step the pipeline calls, and
#: the pipeline itself (an --entry file that faults itself: a real user path).
CLI_TARGETS = ("seed", "acquire_lock", "report", PIPELINE_STEP)
CLI_CASES = [(target, fault) for target in CLI_TARGETS for fault in FAULTS]


@pytest.fixture(scope="module")
def cli_results(code_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    base = tmp_path_factory.mktemp("cli-matrix")

    def one(case: tuple[str, str]) -> tuple[Path, dict[str, Any], int | None, str, str]:
        target, fault = case
        case_dir = base / f"{target}-{fault}"
        recipe = case_recipe(case_dir)
        if target == PIPELINE_STEP:
            proc = start_run(code_dir, recipe, case_dir, f"fault_{fault}")
        else:
            plan = {"target": target, "fault": fault}
            proc = start_run(code_dir, recipe, case_dir, "calm", plan=plan)
        out, err = finish(proc)
        return case_dir, recipe, proc.returncode, out, err

    return in_parallel(one, CLI_CASES)


@pytest.mark.parametrize(("target", "fault"), CLI_CASES)
def test_cli_fault_exits_with_its_code_and_leaves_a_true_record(
    cli_results: dict[Any, Any], target: str, fault: str
) -> None:
    case_dir, recipe, code, out, err = cli_results[(target, fault)]
    tally(faults=1, signals=fault.startswith("sig"), runs=1)
    killed = fault == "sigkill"
    check_disk(case_dir, recipe, killed=killed)
    if killed:
        assert code == -signal.SIGKILL, err
        check_crashed(case_dir, target)
        return
    assert code == CLI_EXIT[fault], err
    assert out.rstrip().splitlines()[-1] == f"status: {STATUS_AFTER[fault]}"
    dirs = run_dirs(case_dir / "outputs")
    if target in BEFORE_RUN_DIR:
        assert dirs == []
    else:
        (root,) = dirs
        check_record(root, target, fault)


# -- 2. two SIGTERMs a few ms apart ---------------------------------------------------------

LIBRARY_RACE_ITERATIONS = 40
CLI_RACE_ITERATIONS = 8  # both moments, gaps 0-20 ms: a torch start-up each


def race_cases(count: int) -> list[tuple[str, int]]:
    """(moment, gap in ms) for each iteration: both moments, gaps 0 to 20 ms."""
    return [
        (("pipeline", "cleanup")[i % 2], round(i * 20 / max(count - 1, 1))) for i in range(count)
    ]


def test_double_sigterm_in_library_use_always_ends_interrupted(
    code_dir: Path, tmp_path: Path
) -> None:
    cases = []
    for index, (moment, gap) in enumerate(race_cases(LIBRARY_RACE_ITERATIONS)):
        case_dir = tmp_path / f"race-{index}"
        cases.append(
            {
                "name": str(index),
                "moment": moment,
                "gap_ms": gap,
                "recipe": case_recipe(case_dir),
            }
        )
    proc = run_child(code_dir, {"mode": "race", "cases": cases})
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = verdicts(proc.stdout)
    counts = tagged(proc.stdout, "SIGNALS ")
    tally(signals=counts["sent"], runs=len(cases))
    assert counts["sent"] == 2 * len(cases)
    for case in cases:
        verdict = found[case["name"]]
        assert verdict["caught"] == "RunInterrupted", (case["moment"], case["gap_ms"], verdict)
        assert verdict["status"] == "interrupted", (case["moment"], case["gap_ms"], verdict)
        assert verdict["state"] in ("cleaned", "failed"), verdict
        assert verdict["leaks"] == [], verdict
        case_dir = tmp_path / f"race-{case['name']}"
        check_disk(case_dir, case["recipe"], killed=False)


def test_double_sigterm_through_the_cli_always_exits_143_interrupted(
    code_dir: Path, tmp_path: Path
) -> None:
    def one(index: int, moment: str, gap: int) -> tuple[str, int, int | None, str, Path]:
        case_dir = tmp_path / f"race-{index}"
        recipe = case_recipe(case_dir)
        if moment == "cleanup":
            proc = start_run(code_dir, recipe, case_dir, "calm", plan={"release_race_gap_ms": gap})
        else:
            proc = start_run(code_dir, recipe, case_dir, "wait_to_be_signalled")
            deadline = time.monotonic() + CHILD_TIMEOUT_S  # four start at once, under load
            while not list((case_dir / "outputs").glob("*/entered")):
                assert proc.poll() is None, finish(proc)
                assert time.monotonic() < deadline, "the run never reached its pipeline"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            time.sleep(gap / 1000)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        out, err = finish(proc)
        return moment, gap, proc.returncode, out + err, case_dir

    with ThreadPoolExecutor(max_workers=4) as pool:
        iterations = [(i, m, g) for i, (m, g) in enumerate(race_cases(CLI_RACE_ITERATIONS))]
        results = list(pool.map(lambda args: one(*args), iterations))
    tally(signals=2 * len(results), runs=len(results))
    for moment, gap, code, output, case_dir in results:
        where = (moment, gap, code, output[-1500:])
        (root,) = run_dirs(case_dir / "outputs")
        assert read_run(root).status == "interrupted", where
        check_disk(case_dir, case_recipe(case_dir), killed=False)
        assert code == 128 + signal.SIGTERM, where
        assert "status: interrupted" in output, where


def test_a_second_sigterm_while_the_cli_reports_still_exits_143(
    code_dir: Path, tmp_path: Path
) -> None:
    recipe = case_recipe(tmp_path)
    proc = start_run(
        code_dir, recipe, tmp_path, "fault_sigterm", plan={"sigterm_while_reporting": True}
    )
    out, err = finish(proc)
    tally(faults=1, signals=2, runs=1)
    (root,) = run_dirs(tmp_path / "outputs")
    assert read_run(root).status == "interrupted"
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, out, err)


# -- 3. many launches at once -----------------------------------------------------------------

# Four launches per core of this 2-core machine: each is still importing torch while
# others claim directories and race for the lock (16 cost twice the CPU for the same race).
LAUNCHES = 8


def launch_all(
    code_dir: Path, tmp_path: Path, recipes: Sequence[dict[str, Any]], function: str, **env: str
) -> list[subprocess.Popen[str]]:
    # One thread each while importing: all the launches share 2 cores here.
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}
    return [
        start_run(code_dir, recipe, tmp_path / f"launch-{index}", function, extra_env=env)
        for index, recipe in enumerate(recipes)
    ]


def test_concurrent_launches_into_one_output_dir_get_a_run_each(
    code_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    recipes = []
    for index in range(LAUNCHES):
        recipe = case_recipe(shared, training={"seed": index})
        recipe["infrastructure"]["lock"]["path"] = str(tmp_path / "locks" / f"run-{index}.lock")
        recipes.append(recipe)
    procs = launch_all(code_dir, tmp_path, recipes, "calm")
    outputs = [finish(proc, timeout=240) for proc in procs]
    tally(runs=LAUNCHES)
    assert [p.returncode for p in procs] == [0] * LAUNCHES, [o[1][-500:] for o in outputs]
    dirs = run_dirs(shared / "outputs")
    assert len(dirs) == LAUNCHES
    assert sorted(read_run(d).status for d in dirs) == ["completed"] * LAUNCHES
    assert unparsable_files(tmp_path, torn_last_line_ok=False) == []
    assert temp_files(tmp_path) == []
    for recipe in recipes:
        lock_path = Path(recipe["infrastructure"]["lock"]["path"])
        assert lock_is_free(lock_path) and read_lock_holder(lock_path) is None


def test_concurrent_launches_on_one_lock_let_exactly_one_run(
    code_dir: Path, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    recipe = case_recipe(shared, infrastructure={"lock": {"timeout_s": 0}})
    recipe["infrastructure"]["lock"]["path"] = str(tmp_path / "locks" / "run.lock")
    release = tmp_path / "release"
    procs = launch_all(
        code_dir,
        tmp_path,
        [recipe] * LAUNCHES,
        "hold_until_released",
        ORCHESTRATOR_FSM_TEST_RELEASE=str(release),
    )
    tally(runs=LAUNCHES)
    try:
        deadline = time.monotonic() + 240
        while sum(p.poll() is not None for p in procs) < LAUNCHES - 1:
            assert time.monotonic() < deadline, "the contenders did not all fail"
            time.sleep(0.05)
    finally:
        release.write_text("go")
    outputs = [finish(proc, timeout=240) for proc in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0] + [1] * (LAUNCHES - 1), [o[1][-500:] for o in outputs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        if proc.returncode == 1:
            assert "the run lock is taken" in err and "LockContendedError" in err, err
    dirs = run_dirs(shared / "outputs")
    assert len(dirs) == LAUNCHES  # every contender provisioned its own directory first
    records = [read_run(d) for d in dirs]
    assert sorted(r.status for r in records) == ["completed"] + ["refused"] * (LAUNCHES - 1)
    for record in records:
        if record.status == "refused":
            assert record.error is not None and record.error.step == "acquire_lock"
            assert record.error.type == "LockContendedError"
    assert unparsable_files(tmp_path, torn_last_line_ok=False) == []
    assert temp_files(tmp_path) == []
    lock_path = tmp_path / "locks" / "run.lock"
    assert lock_is_free(lock_path) and read_lock_holder(lock_path) is None
