"""Questions about the machine and the process that several parts of the package ask.

One answer each: how many CPUs this process may use, whether MPS is usable, whether a
pid names a live process, how this process was started, and which version of a
distribution is installed.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TextIO

if TYPE_CHECKING:
    from importlib import metadata

__all__ = [
    "available_cpu_count",
    "boot_id",
    "distribution_version",
    "mps_available",
    "name_and_version",
    "pid_exists",
    "process_start_ticks",
    "process_started_at",
    "record_invocation",
    "say_on_stderr",
]


def available_cpu_count() -> int:
    """CPUs this process may run on: its affinity mask where the OS has one, else all.

    A container or ``taskset`` may allow fewer CPUs than the machine has; never below 1.
    """
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def mps_available() -> bool:
    """Whether torch can use Apple's MPS backend in this process."""
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pid_exists(pid: object) -> bool | None:
    """Whether ``pid`` names a live process on this host; None when that cannot be told.

    Uses signal 0, which checks for existence and delivers nothing. A process owned by
    another user counts as alive. POSIX only: elsewhere (where ``os.kill`` would
    terminate the target) the answer is None, as it is for a pid that is not a positive
    integer.
    """
    if os.name != "posix" or isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return None
    return True


def boot_id() -> str | None:
    """An id of this boot of the machine (Linux), or None where the OS offers none.

    A pid recorded under another boot id names no process of this boot.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            return handle.read().strip() or None
    except OSError:
        return None


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or None.

    Together with the pid and the boot id it identifies one process: a pid reused by a
    later process has another start time.
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces; start time is
    # field 22, the 20th after the closing parenthesis.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


_IMPORTED_AT = datetime.now(timezone.utc)


def process_started_at() -> datetime:
    """When this process started (UTC), from the kernel where it says (Linux); else
    when this module was imported, which is no earlier."""
    ticks = process_start_ticks(os.getpid())
    try:
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(int(line.split()[1]) for line in handle if line.startswith("btime "))
        per_second = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, StopIteration, IndexError):
        return _IMPORTED_AT
    if ticks is None or per_second <= 0:
        return _IMPORTED_AT
    return datetime.fromtimestamp(boot + ticks / per_second, tz=timezone.utc)


#: The console script this package installs: recorded by name, not by where it lives.
_CONSOLE_SCRIPT: Final = "orchestrator-fsm"


def _entry_point(argv0: str) -> str | None:
    if not argv0 or argv0 in ("-c", "-"):
        return None
    if Path(argv0).name == _CONSOLE_SCRIPT:
        return _CONSOLE_SCRIPT
    candidate = Path(argv0)
    if not candidate.exists():
        found = shutil.which(argv0)
        if found is None:
            return argv0
        candidate = Path(found)
    return str(candidate.resolve())


def record_invocation() -> dict[str, Any]:
    """How this process was started, as plain data for ``run.json``.

    Keys: ``argv``; ``cwd`` (``None`` if it no longer exists); ``entry_point`` (the
    resolved path of ``sys.argv[0]``, ``orchestrator-fsm`` for this package's command,
    ``None`` for ``-c`` or an interactive session);
    ``entry_module`` (the module run with ``python -m``, else ``None``); ``python``
    (version); ``python_executable``; ``python_implementation``.
    """
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    try:
        cwd: str | None = os.getcwd()
    except OSError:
        cwd = None
    return {
        "argv": list(sys.argv),
        "cwd": cwd,
        "entry_point": _entry_point(sys.argv[0] if sys.argv else ""),
        "entry_module": getattr(spec, "name", None),
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "python_implementation": platform.python_implementation(),
    }


def name_and_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    """``Name`` and ``Version`` from a distribution's metadata file, read once.

    The same fields ``dist.metadata["Name"]`` and ``dist.version`` give, without parsing
    the whole file as an email message (twice, for both): only the header block (up to
    the first blank line) is scanned, and a field's first occurrence wins, as in the
    email parser.
    """
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    header, _, _ = text.partition("\n\n")
    name: str | None = None
    version: str | None = None
    for line in header.splitlines():
        if not line.strip():
            break
        field, sep, value = line.partition(":")
        if not sep:
            continue
        field = field.strip().lower()
        if field == "name" and name is None:
            name = value.strip()
        elif field == "version" and version is None:
            version = value.strip()
        if name is not None and version is not None:
            break
    return name, version


@cache
def distribution_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    # Imported here: importlib.metadata is slow to import, and most callers never ask.
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return None
    return name_and_version(dist)[1]


def say_on_stderr(line: str, stream: TextIO | None = None) -> None:
    """Write ``orchestrator-fsm: <line>`` on ``stream`` (default: ``sys.stderr`` now).

    For the package's own failures while writing a run's files: the log file may sit on
    the same full disk, so one plain line on stderr is what surely reaches the user. A
    stream that cannot take it either is left alone.
    """
    try:
        target = sys.stderr if stream is None else stream
        target.write(f"orchestrator-fsm: {line}\n")
        target.flush()
    except (OSError, ValueError, AttributeError):
        pass
