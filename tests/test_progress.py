"""Progress bars share the run's console: in a real pty, log lines print whole above the
bar; on a pipe, bars are plain lines with no escape codes."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import shlex
import shutil
import struct
import subprocess
import sys
import tempfile
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from orchestrator_fsm import progress

COLUMNS, ROWS = 100, 60

# A run whose user logs (its own logger and the run's) while two nested bars are live.
SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from conftest import minimal_recipe
    from orchestrator_fsm import Config, RootOrchestrator

    cfg = Config.from_dict(minimal_recipe(Path(sys.argv[1])))
    user = logging.getLogger("mytrain")
    with RootOrchestrator(cfg, rank=0, local_rank=0) as orch:
        print("RUN_ID", orch.paths.run_id, flush=True)
        with orch.progress(total=3, description="training") as bar:
            for epoch in range(1, 4):
                for step in orch.progress(range(20), description=f"epoch {epoch}/3"):
                    time.sleep(0.01)
                    if step == 10:
                        user.info("halfway, epoch %d of %s", epoch, orch.paths.run_id)
                bar.advance(loss=1.0 / epoch)
                orch.run_logger.info("epoch %d done for run %s", epoch, orch.paths.run_id)
    """
)


def _script(tmp_path: Path, work: Path | None = None) -> list[str]:
    path = tmp_path / "bars.py"
    path.write_text(SCRIPT, encoding="utf-8")
    work = work or tmp_path / "work"
    return [sys.executable, str(path), str(work), str(Path(__file__).parent)]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path, so the run's paths fit on one terminal line."""
    path = Path(tempfile.mkdtemp(prefix="bars", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR", "TERM")}
    env.update(COLUMNS=str(COLUMNS), LINES=str(ROWS), TERM="xterm-256color")
    return env


def _run_in_pty(command: list[str], timeout_s: float = 120.0) -> bytes:
    """``command``'s terminal output, run with stdin, stdout and stderr on a real pty
    of COLUMNS x ROWS."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    process = subprocess.Popen(
        command, stdin=slave, stdout=slave, stderr=slave, env=_environment(), close_fds=True
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(master)
        process.wait(timeout=30)
    assert process.returncode == 0, b"".join(chunks).decode(errors="replace")
    return b"".join(chunks)


def _screen(output: bytes) -> list[str]:
    pyte = pytest.importorskip("pyte")
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(output)
    return [line.rstrip() for line in screen.display]


@pytest.mark.slow
def test_in_a_terminal_log_lines_print_whole_above_the_bar(tmp_path: Path, short_dir: Path) -> None:
    pytest.importorskip("pyte")
    lines = _screen(_run_in_pty(_script(tmp_path, short_dir)))
    text = "\n".join(lines)
    found = re.search(r"RUN_ID (\S+)", text)
    assert found is not None, text
    run_id = found.group(1)

    for epoch in (1, 2, 3):
        done = [line for line in lines if f"epoch {epoch} done for run" in line]
        assert len(done) == 1, text
        assert re.fullmatch(
            rf"\[\d\d:\d\d:\d\d\] INFO +\[rank0\] epoch {epoch} done for run {run_id}", done[0]
        ), text
        halfway = [line for line in lines if f"halfway, epoch {epoch} of" in line]
        assert len(halfway) == 1 and halfway[0].endswith(f"of {run_id}"), text
    # The id is never cut: every line holding its start holds all of it.
    assert all(run_id in line for line in lines if run_id[:15] in line), text
    # No log line carries a piece of a bar, and no bar a piece of a log line.
    bars = [line for line in lines if "━" in line]
    assert all(line.startswith(("training", "epoch")) for line in bars), text
    assert not any("INFO" in line for line in bars), text
    # The inner bars made room as they ended; the outer one's last frame stays, clean.
    assert len(bars) == 1, text
    assert re.fullmatch(r"training +━+ +3/3 +loss=0\.3333 +\d+:\d\d:\d\d", bars[0]), text
    assert any(f"run {run_id} completed after" in line for line in lines), text
    # A long line is wrapped at a space: the run directory's path stays one token.
    root = str(short_dir / "outputs" / run_id)
    assert len(root) < COLUMNS and any(line == root or line.endswith(f" {root}") for line in lines)


@pytest.mark.slow
def test_on_a_pipe_bars_and_logs_are_plain_lines(tmp_path: Path) -> None:
    done = subprocess.run(
        _script(tmp_path),
        capture_output=True,
        text=True,
        env=_environment(),
        timeout=120,
        check=True,
    )
    output = done.stdout + done.stderr
    assert "\x1b" not in output
    run_id = re.search(r"RUN_ID (\S+)", done.stdout)
    assert run_id is not None
    lines = done.stderr.splitlines()
    for epoch in (1, 2, 3):
        assert f"[rank0] INFO     epoch {epoch} done for run {run_id.group(1)}" in lines
        assert any(re.fullmatch(rf"epoch {epoch}/3 20/20 \d+\.\ds", line) for line in lines)
    assert any(re.fullmatch(r"training 3/3 loss=0\.3333 \d+\.\ds", line) for line in lines)
    assert not any("━" in line for line in lines)


def test_a_bar_outside_a_run_wraps_an_iterable_and_ends_with_one_plain_line() -> None:
    stream = io.StringIO()
    seen = list(progress(["a", "b", "c"], description="files", console=stream))
    assert seen == ["a", "b", "c"]
    assert re.fullmatch(r"files 3/3 \d+\.\ds\n", stream.getvalue())


def test_plain_lines_come_every_interval_when_asked() -> None:
    stream = io.StringIO()
    with progress(total=2, description="steps", console=stream, plain_every_s=1e-9) as bar:
        bar.advance(loss=0.5)
        time.sleep(0.001)
        bar.advance(loss=0.25)
    lines = stream.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[0] for line in lines] == [
        "steps 1/2 loss=0.5",
        "steps 2/2 loss=0.25",
        "steps 2/2 loss=0.25",
    ]


def test_a_disabled_bar_writes_nothing_and_still_yields_everything() -> None:
    stream = io.StringIO()
    assert list(progress(range(3), console=stream, disable=True)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_a_bar_on_a_terminal_console_draws_a_rich_bar() -> None:
    stream = io.StringIO()
    console = Console(file=stream, force_terminal=True, width=80)
    with progress(total=4, description="epoch 1", console=console) as bar:
        assert bar.is_terminal
        bar.advance(4)
    assert "epoch 1" in stream.getvalue() and "4/4" in stream.getvalue()
    assert "━" in stream.getvalue()


def test_a_bar_without_an_iterable_cannot_be_iterated_and_totals_are_checked() -> None:
    with pytest.raises(TypeError, match="advance"):
        list(progress(total=3))
    with pytest.raises(ValueError, match="total must be"):
        progress(total=-1)


# A run whose user prints (stdout and stderr) and logs through a handler of their own
# (logging.basicConfig) while a bar is live, then prints once the run is over.
PRINTING_SCRIPT = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from conftest import minimal_recipe
    from orchestrator_fsm import Config, RootOrchestrator

    logging.basicConfig(format="USERLOG %(message)s")
    user = logging.getLogger("mytrain")
    user.setLevel(logging.INFO)
    cfg = Config.from_dict(minimal_recipe(Path(sys.argv[1])))
    with RootOrchestrator(cfg, rank=0, local_rank=0) as orch:
        print("RUN_ROOT", orch.paths.root, flush=True)
        with orch.progress(total=30, description="training") as bar:
            for step in range(30):
                time.sleep(0.02)
                if step % 10 == 5:
                    print(f"printed at step {step}")
                if step == 12:
                    print("to stderr at step 12", file=sys.stderr)
                if step == 18:
                    user.info("user log at step 18")
                if step == 22:
                    sys.stdout.write("a partial ")
                    sys.stdout.write("line at step 22\\n")
                bar.advance()
    print("AFTER THE RUN", flush=True)
    """
)


def _tmux_screen(command: list[str], done: Path, columns: int, rows: int) -> list[str]:
    """The screen of a tmux pane of ``columns`` x ``rows`` once ``command``, run in it,
    has written its exit status to ``done``."""
    tmux = shutil.which("tmux")
    if tmux is None:
        pytest.skip("needs tmux")
    socket = f"bars-{os.getpid()}-{time.monotonic_ns()}"
    base = [tmux, "-L", socket, "-f", "/dev/null"]
    shell = f"{shlex.join(command)}; echo $? > {shlex.quote(str(done))}; sleep 600"
    subprocess.run(
        [*base, "new-session", "-d", "-x", str(columns), "-y", str(rows), shell],
        check=True,
        env=_environment(),
        timeout=30,
    )
    try:
        deadline = time.monotonic() + 120
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        screen = subprocess.run(
            [*base, "capture-pane", "-p"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
    finally:
        subprocess.run([*base, "kill-server"], check=False, timeout=30)
    assert done.exists() and done.read_text().strip() == "0", screen
    return [line.rstrip() for line in screen.splitlines()]


@pytest.mark.slow
def test_in_tmux_prints_and_logs_appear_above_a_live_bar_and_no_bar_is_left_behind(
    tmp_path: Path, short_dir: Path
) -> None:
    script = tmp_path / "printing.py"
    script.write_text(PRINTING_SCRIPT, encoding="utf-8")
    command = [sys.executable, str(script), str(short_dir), str(Path(__file__).parent)]
    lines = _tmux_screen(command, tmp_path / "done", COLUMNS, ROWS)
    text = "\n".join(lines)

    printed = [
        "printed at step 5",
        "to stderr at step 12",
        "printed at step 15",
        "USERLOG user log at step 18",
        "a partial line at step 22",
        "printed at step 25",
    ]
    # Each is a whole line of its own, once, in the order written, above the bar.
    assert [line for line in lines if line in printed] == printed, text
    bars = [index for index, line in enumerate(lines) if "━" in line]
    assert len(bars) == 1, text  # no stale copy of the bar anywhere
    assert re.fullmatch(r"training +━+ +30/30 +\d+:\d\d:\d\d", lines[bars[0]]), text
    assert lines.index(printed[-1]) < bars[0] < lines.index("AFTER THE RUN"), text

    # print() lands in the run's stdout.log by default; log records do not.
    root = Path(next(line for line in lines if line.startswith("RUN_ROOT")).split()[1])
    copied = (root / "logs" / "stdout.log").read_text(encoding="utf-8").splitlines()
    assert copied == [f"RUN_ROOT {root}", *(line for line in printed if "USERLOG" not in line)]
