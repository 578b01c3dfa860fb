"""SIGUSR1 and SIGUSR2 call a user's checkpoint callback while a run is live."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import cli_command, minimal_recipe, wait_for
from fakes import Calls, fake_dependencies

from orchestrator_fsm import ConfigError, LifecycleError, read_run
from orchestrator_fsm._specs import callback_signal
from orchestrator_fsm.cli import EXIT_USAGE, main
from orchestrator_fsm.orchestrator import RootOrchestrator

ConfigFactory = Callable[..., Any]

CHECKPOINTS = textwrap.dedent(
    """
    import signal
    import threading
    import time


    def save(orch, signum):
        where = "main" if threading.current_thread() is threading.main_thread() else "other"
        name = signal.Signals(signum).name
        (orch.paths.checkpoints / f"{name}.txt").write_text(f"{orch.state.value} {where}")


    def fail(orch, signum):
        raise RuntimeError("disk full while checkpointing")


    def train_until_checkpointed(orch):
        (orch.paths.root / "entered").write_text("yes")
        deadline = time.monotonic() + 60
        while not (orch.paths.checkpoints / "SIGUSR1.txt").exists():
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.01)
    """
)

LIBRARY_PREAMBLE = textwrap.dedent(
    """
    import json, os, signal, sys
    from orchestrator_fsm import Config, RootOrchestrator
    from checkpoints import save, fail, train_until_checkpointed

    cfg = Config.from_dict(json.loads(sys.argv[1]))
    """
)


@pytest.fixture
def checkpoints(tmp_path: Path) -> Path:
    """A module of checkpoint callbacks in ``tmp_path`` (the children's working directory)."""
    path = tmp_path / "checkpoints.py"
    path.write_text(CHECKPOINTS, encoding="utf-8")
    return path


def start_library_run(tmp_path: Path, body: str, **sections: Any) -> subprocess.Popen[str]:
    """A child process running ``body`` after the preamble, on the minimal recipe."""
    script = tmp_path / "child.py"
    script.write_text(LIBRARY_PREAMBLE + textwrap.dedent(body), encoding="utf-8")
    recipe = json.dumps(minimal_recipe(tmp_path, **sections))
    return subprocess.Popen(
        [sys.executable, str(script), recipe],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The child's output once it has exited (killed if it outlives the timeout)."""
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    return out, err


def only_run(tmp_path: Path) -> Path:
    (root,) = (tmp_path / "outputs").iterdir()
    return root


def test_sigusr1_from_outside_calls_the_callback_given_in_code_in_the_main_thread(
    tmp_path: Path, checkpoints: Path
) -> None:
    proc = start_library_run(
        tmp_path,
        """
        delivered = []
        mine = lambda signum, frame: delivered.append(signum)
        signal.signal(signal.SIGUSR1, mine)
        with RootOrchestrator(cfg, signal_callbacks={signal.SIGUSR1: save}) as orch:
            train_until_checkpointed(orch)
        restored = signal.getsignal(signal.SIGUSR1) is mine
        print(json.dumps({"chained": delivered, "restored": restored}))
        """,
    )
    wait_for(lambda: list((tmp_path / "outputs").glob("*/entered")), proc)
    proc.send_signal(signal.SIGUSR1)
    out, _ = finish(proc)

    assert json.loads(out) == {"chained": [signal.SIGUSR1], "restored": True}
    root = only_run(tmp_path)
    assert (root / "checkpoints" / "SIGUSR1.txt").read_text() == "ready main"
    assert read_run(root).status == "completed"
    log = (root / "logs" / "run.log").read_text()
    assert "received SIGUSR1; calling checkpoints:save" in log


def test_recipe_callbacks_named_by_module_and_by_file_are_called(
    tmp_path: Path, checkpoints: Path
) -> None:
    callbacks = {"SIGUSR1": "checkpoints:save", "usr2": f"{checkpoints}:save"}
    proc = start_library_run(
        tmp_path,
        """
        with RootOrchestrator(cfg) as orch:
            os.kill(os.getpid(), signal.SIGUSR1)
            os.kill(os.getpid(), signal.SIGUSR2)
        print(all(signal.getsignal(s) is signal.SIG_DFL for s in (signal.SIGUSR1, signal.SIGUSR2)))
        """,
        infrastructure={"signal_callbacks": callbacks},
    )
    out, _ = finish(proc)

    assert out.split() == ["True"]
    root = only_run(tmp_path)
    assert (root / "checkpoints" / "SIGUSR1.txt").read_text() == "ready main"
    assert (root / "checkpoints" / "SIGUSR2.txt").read_text() == "ready main"
    assert read_run(root).status == "completed"
    log = (root / "logs" / "run.log").read_text()
    assert "received SIGUSR1; calling checkpoints:save" in log
    assert f"received SIGUSR2; calling {checkpoints}:save" in log


def test_a_failing_callback_is_logged_with_its_traceback_and_the_run_completes(
    tmp_path: Path, checkpoints: Path
) -> None:
    proc = start_library_run(
        tmp_path,
        """
        with RootOrchestrator(cfg) as orch:
            os.kill(os.getpid(), signal.SIGUSR1)
            (orch.paths.exports / "went-on.txt").write_text("yes")
        """,
        infrastructure={"signal_callbacks": {"SIGUSR1": "checkpoints:fail"}},
    )
    finish(proc)

    root = only_run(tmp_path)
    assert (root / "exports" / "went-on.txt").is_file()
    assert read_run(root).status == "completed"
    log = (root / "logs" / "run.log").read_text()
    assert "SIGUSR1 callback checkpoints:fail failed; the run goes on" in log
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: disk full while checkpointing" in log


def test_sigusr1_sent_to_a_cli_run_calls_the_recipe_callback(
    tmp_path: Path, checkpoints: Path
) -> None:
    recipe = tmp_path / "recipe.yaml"
    callbacks = {"SIGUSR1": f"{checkpoints}:save"}
    data = minimal_recipe(tmp_path, infrastructure={"signal_callbacks": callbacks})
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    entry = f"{checkpoints}:train_until_checkpointed"
    proc = subprocess.Popen(
        cli_command("run", str(recipe), "--entry", entry),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: list((tmp_path / "outputs").glob("*/entered")), proc)
    proc.send_signal(signal.SIGUSR1)
    out, _ = finish(proc)

    assert out.splitlines()[-1] == "status: completed"
    root = only_run(tmp_path)
    assert (root / "checkpoints" / "SIGUSR1.txt").read_text() == "ready main"


def test_a_callback_given_in_code_replaces_the_recipes_which_is_never_imported(
    make_config: ConfigFactory,
) -> None:
    # The recipe's module does not exist: importing it would be a ConfigError at enter.
    cfg = make_config(infrastructure={"signal_callbacks": {"SIGUSR1": "no_such_module:save"}})
    calls: list[tuple[str, int]] = []
    orch = RootOrchestrator(
        cfg,
        rank=0,
        local_rank=0,
        signal_callbacks={"SIGUSR1": lambda orch, signum: calls.append(("given", signum))},
        **fake_dependencies(Calls()),
    )
    with orch:
        orch.on_signal("USR1", lambda orch, signum: calls.append(("attached live", signum)))
        os.kill(os.getpid(), signal.SIGUSR1)
    assert calls == [("attached live", signal.SIGUSR1)]
    assert orch.paths is not None
    assert read_run(orch.paths.root).status == "completed"


def test_a_callback_is_not_called_again_while_it_still_runs(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def checkpoint_twice_signalled(orch: RootOrchestrator, signum: int) -> None:
        calls.append(signum)
        os.kill(os.getpid(), signum)  # a second request arrives mid-checkpoint

    orch = RootOrchestrator(
        make_config(),
        rank=0,
        local_rank=0,
        signal_callbacks={"SIGUSR2": checkpoint_twice_signalled},
        **fake_dependencies(Calls()),
    )
    with caplog.at_level(logging.INFO, logger="orchestrator_fsm"), orch:
        os.kill(os.getpid(), signal.SIGUSR2)
    assert calls == [signal.SIGUSR2]
    assert "received SIGUSR2 again while" in caplog.text


def test_a_base_exception_from_the_callback_ends_the_run(make_config: ConfigFactory) -> None:
    def stop(orch: RootOrchestrator, signum: int) -> None:
        raise KeyboardInterrupt

    orch = RootOrchestrator(
        make_config(),
        rank=0,
        local_rank=0,
        signal_callbacks={signal.SIGUSR1: stop},
        **fake_dependencies(Calls()),
    )
    previous = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(KeyboardInterrupt), orch:
        os.kill(os.getpid(), signal.SIGUSR1)
    assert orch.paths is not None
    assert read_run(orch.paths.root).status == "interrupted"
    assert signal.getsignal(signal.SIGUSR1) is previous


def test_outside_the_main_thread_no_handler_is_installed_and_a_warning_says_so(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    orch = RootOrchestrator(
        make_config(),
        rank=0,
        local_rank=0,
        signal_callbacks={"SIGUSR1": lambda orch, signum: None},
        **fake_dependencies(Calls()),
    )
    previous = signal.getsignal(signal.SIGUSR1)
    seen: list[object] = []

    def run_in_a_thread() -> None:
        with orch:
            seen.append(signal.getsignal(signal.SIGUSR1))

    with caplog.at_level(logging.WARNING, logger="orchestrator_fsm"):
        worker = threading.Thread(target=run_in_a_thread)
        worker.start()
        worker.join(timeout=60)
    assert not worker.is_alive()
    assert seen == [previous]
    assert "SIGUSR1 callback not installed" in caplog.text
    assert "main thread" in caplog.text


@pytest.mark.parametrize(
    ("key", "named"),
    [
        (signal.SIGTERM, "not SIGTERM"),
        (signal.SIGINT, "not SIGINT"),
        ("SIGHUP", "not SIGHUP"),
        ("KILL", "not SIGKILL"),
        ("SIGFOO", "not 'SIGFOO'"),
        (0, "not 0"),
    ],
)
def test_only_sigusr1_and_sigusr2_can_have_a_callback(
    make_config: ConfigFactory, key: int | str, named: str
) -> None:
    allowed = "can be attached to SIGUSR1 or SIGUSR2 (or USR1, USR2) only"
    with pytest.raises(ValueError) as caught:
        RootOrchestrator(make_config(), signal_callbacks={key: lambda orch, signum: None})
    assert allowed in str(caught.value)
    assert named in str(caught.value)
    orch = RootOrchestrator(make_config())
    with pytest.raises(ValueError, match=named):
        orch.on_signal(key, lambda orch, signum: None)


def test_the_interrupting_signals_are_named_as_ending_the_run() -> None:
    with pytest.raises(ValueError, match=r"not SIGTERM \(SIGINT, SIGTERM and SIGHUP end the run\)"):
        callback_signal(signal.SIGTERM)


@pytest.mark.parametrize("key", [signal.SIGUSR1, int(signal.SIGUSR1), "SIGUSR1", "usr1", " Usr1 "])
def test_sigusr1_is_named_by_number_or_by_name_with_or_without_sig(key: int | str) -> None:
    assert callback_signal(key) is signal.SIGUSR1


def test_a_callback_must_be_callable(make_config: ConfigFactory) -> None:
    with pytest.raises(TypeError, match="the callback for SIGUSR1 must be callable"):
        RootOrchestrator(make_config()).on_signal("SIGUSR1", "checkpoints:save")  # type: ignore[arg-type]


def test_no_callback_can_be_attached_once_the_run_has_ended(make_config: ConfigFactory) -> None:
    orch = RootOrchestrator(make_config(), rank=0, local_rank=0, **fake_dependencies(Calls()))
    with orch:
        pass
    with pytest.raises(LifecycleError, match="this run is cleaned"):
        orch.on_signal("SIGUSR1", lambda orch, signum: None)


def test_recipe_signal_names_are_stored_by_their_full_name(make_config: ConfigFactory) -> None:
    cfg = make_config(infrastructure={"signal_callbacks": {"usr1": "a:b", "SIGUSR2": "c.py:d"}})
    assert cfg.infrastructure.signal_callbacks == {"SIGUSR1": "a:b", "SIGUSR2": "c.py:d"}


@pytest.mark.parametrize(
    ("callbacks", "path", "expected"),
    [
        ({"SIGFOO": "a:b"}, "infrastructure.signal_callbacks.SIGFOO", "SIGUSR1 or SIGUSR2"),
        ({"SIGTERM": "a:b"}, "infrastructure.signal_callbacks.SIGTERM", "end the run"),
        ({"SIGUSR1": "no-colon"}, "infrastructure.signal_callbacks.SIGUSR1", "'module:function'"),
        ({"USR2": 7}, "infrastructure.signal_callbacks.USR2", "got 7"),
        ({"USR1": "a:b", "SIGUSR1": "c:d"}, "infrastructure.signal_callbacks.SIGUSR1", "'USR1'"),
        (["SIGUSR1"], "infrastructure.signal_callbacks", "a mapping of signal name"),
    ],
)
def test_bad_recipe_signal_callbacks_are_config_errors_at_their_path(
    make_config: ConfigFactory, callbacks: object, path: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(infrastructure={"signal_callbacks": callbacks})
    ((found_path, message),) = caught.value.problems
    assert found_path == path
    assert expected in message


def test_a_recipe_callback_that_cannot_be_imported_is_a_config_error_before_the_run_starts(
    tmp_path: Path, make_config: ConfigFactory
) -> None:
    cfg = make_config(infrastructure={"signal_callbacks": {"USR2": "json:dumpz"}})
    orch = RootOrchestrator(cfg, rank=0, local_rank=0, **fake_dependencies(Calls()))
    previous = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(ConfigError) as caught, orch:
        pass
    ((path, message),) = caught.value.problems
    assert path == "infrastructure.signal_callbacks.SIGUSR2"
    assert "'json' has no attribute 'dumpz'" in message
    assert "did you mean" in message
    assert orch.state.value == "created"
    assert not (tmp_path / "outputs").exists()
    assert signal.getsignal(signal.SIGUSR2) is previous


def test_the_cli_exits_2_naming_the_field_of_a_callback_that_cannot_be_imported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "recipe.yaml"
    callbacks = {"SIGUSR1": str(tmp_path / "missing.py") + ":save"}
    data = minimal_recipe(tmp_path, infrastructure={"signal_callbacks": callbacks})
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["run", str(recipe), "--entry", "json:dumps"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "infrastructure.signal_callbacks.SIGUSR1: entry file not found" in err
    assert not (tmp_path / "outputs").exists()
