"""Phase 2 — runtime: CPU thread budget and headless-friendly library defaults.

``apply_cpu_threads`` and ``configure_system_libraries`` are the default steps;
``RuntimeState`` is their undo.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any, Final, cast

import attrs
import torch

from orchestrator_fsm._process import undoable
from orchestrator_fsm._system import available_cpu_count

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import Undo
    from orchestrator_fsm.run_context import RunContext

__all__ = [
    "QUIETED_WARNINGS",
    "THREAD_ENV_VARS",
    "RuntimeState",
    "apply_cpu_threads",
    "available_cpu_count",
    "choose_cpu_threads",
    "configure_system_libraries",
    "step",
]

logger = logging.getLogger(__name__)

#: Variables that size the thread pools of OpenMP, MKL, OpenBLAS and numexpr. They are
#: read when a library loads, so setting them here only affects child processes.
THREAD_ENV_VARS: Final = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
_MPLBACKEND: Final = "MPLBACKEND"
_HEADLESS_BACKEND: Final = "Agg"

#: ``(message regex, category)`` of warnings that ``configure_system_libraries``
#: silences because the lifecycle already made the choice they warn about: the worker
#: count is chosen on purpose (torch warns when it exceeds its own CPU estimate), and a
#: non-GUI matplotlib backend is selected on purpose (matplotlib warns on ``show()``).
QUIETED_WARNINGS: Final[tuple[tuple[str, type[Warning]], ...]] = (
    (r"This DataLoader will create \d+ worker processes in total", UserWarning),
    (r"Matplotlib is currently using agg, which is a non-GUI backend", UserWarning),
    (r"FigureCanvasAgg is non-interactive, and thus cannot be shown", UserWarning),
)


# The OMP_NUM_THREADS value this module last exported where the variable held another
# one: that value is this module's own choice, not a launcher's.
_own_export: str | None = None


def _launcher_threads() -> int | None:
    """``OMP_NUM_THREADS`` as a launcher (or the user) set it; None when unset, not a
    count, or the value :func:`apply_cpu_threads` itself exported."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value.isdigit() or int(value) < 1 or value == _own_export:
        return None
    return int(value)


def _ranks_on_node() -> int:
    from orchestrator_fsm.distributed import discover_launch

    try:
        return discover_launch().local_world_size
    except ValueError:
        return 1  # discovery's own error is raised where the run starts, not here


def choose_cpu_threads(
    num_workers: int, cpu_threads: int | None = None, *, ranks_on_node: int | None = None
) -> tuple[int, str]:
    """The thread count :func:`apply_cpu_threads` applies, and why, in words.

    ``cpu_threads`` when given (the recipe's ``hardware.cpu_threads``). Else, when
    several ranks share the node and ``OMP_NUM_THREADS`` is set (torchrun sets 1), that
    value: the launcher sized the node. Else the CPUs this process may use
    (``os.sched_getaffinity``) divided among the ``ranks_on_node`` ranks of this node
    (default: the launch's local world size), minus the ``num_workers`` DataLoader
    workers that compete for them, at least 1. Raises ``ValueError`` as
    :func:`apply_cpu_threads`.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
    if cpu_threads is not None:
        if isinstance(cpu_threads, bool) or not isinstance(cpu_threads, int) or cpu_threads < 1:
            raise ValueError(f"cpu_threads must be an integer >= 1 or None, got {cpu_threads!r}")
        return cpu_threads, "hardware.cpu_threads"
    ranks = _ranks_on_node() if ranks_on_node is None else max(1, ranks_on_node)
    launcher_threads = _launcher_threads()
    if ranks > 1 and launcher_threads is not None:
        return launcher_threads, f"OMP_NUM_THREADS={launcher_threads} from the launcher"
    cpus = available_cpu_count()
    threads = max(1, cpus // ranks - num_workers)
    return threads, (
        f"{cpus} usable CPUs / {ranks} rank{'s' if ranks != 1 else ''} on this node "
        f"- {num_workers} data worker{'s' if num_workers != 1 else ''}"
    )


def apply_cpu_threads(
    num_workers: int, cpu_threads: int | None = None, *, ranks_on_node: int | None = None
) -> int:
    """Size torch's intra-op thread pool and return the number of threads applied.

    The count is :func:`choose_cpu_threads`'s: ``cpu_threads`` when given; under a
    launcher that runs several ranks on the node, its ``OMP_NUM_THREADS``; else the CPUs
    available to this process divided among the node's ranks, minus the
    ``num_workers`` DataLoader workers that will compete for them, at least 1. The same
    number is exported as ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS`` and ``NUMEXPR_NUM_THREADS`` for child processes. Undo as
    phase 2 does: ``undoable(work, RuntimeState.capture())``. Raises ``ValueError`` for a
    negative ``num_workers`` or a ``cpu_threads`` below 1.
    """
    global _own_export
    threads, _ = choose_cpu_threads(num_workers, cpu_threads, ranks_on_node=ranks_on_node)
    if os.environ.get("OMP_NUM_THREADS", "").strip() != str(threads):
        _own_export = str(threads)
    torch.set_num_threads(threads)
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(threads)
    return threads


def _matplotlib_installed() -> bool:
    # find_spec locates the package without importing it (importing matplotlib costs
    # time and may pick a GUI backend); a None placeholder in sys.modules means "blocked".
    return importlib.util.find_spec("matplotlib") is not None


def configure_system_libraries() -> None:
    """Make plotting headless and silence warnings about choices made on purpose.

    When matplotlib is installed, ``MPLBACKEND=Agg`` is exported (it takes effect when
    matplotlib is first imported) and, only if matplotlib is already imported,
    ``matplotlib.use("Agg")`` switches it now; matplotlib is never imported here. The
    warnings in :data:`QUIETED_WARNINGS` get ``ignore`` filters. Undo as phase 2
    does (``undoable`` with :class:`RuntimeState`): filters, backend and the variable.
    """
    if _matplotlib_installed():
        os.environ[_MPLBACKEND] = _HEADLESS_BACKEND
        matplotlib = sys.modules.get("matplotlib")
        if matplotlib is not None:
            matplotlib.use(_HEADLESS_BACKEND)
    for message, category in QUIETED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def _matplotlib_backend() -> str | None:
    """The backend of an already-imported matplotlib, without resolving an "auto" one.

    None when matplotlib is not imported, or when its backend is still the unresolved
    automatic choice (reading it through ``get_backend()`` would import pyplot and pick
    a backend as a side effect).
    """
    matplotlib: Any = sys.modules.get("matplotlib")
    if matplotlib is None:
        return None
    without_resolving = getattr(getattr(matplotlib, "rcParams", None), "_get_backend_or_none", None)
    backend = without_resolving() if callable(without_resolving) else matplotlib.get_backend()
    return None if backend is None else str(backend)


def _mark_warning_filters_changed() -> None:
    # Modules cache "already warned" decisions keyed by a filters version that the
    # warnings module bumps on every public change; assigning the list directly must
    # bump it too, as warnings.catch_warnings does. The hook is private and was renamed
    # in Python 3.14, hence the lookup.
    for name in ("_filters_mutated_lock_held", "_filters_mutated"):
        hook = getattr(warnings, name, None)
        if callable(hook):
            hook()
            return


@attrs.frozen
class RuntimeState:
    """What the runtime phase changes, captured so that cleanup can put it back.

    Covers torch's intra-op and inter-op thread counts, the list of warning filters,
    and the backend of matplotlib when it is imported at capture time. The variables
    the phase exports (:data:`THREAD_ENV_VARS`, ``MPLBACKEND``) are not part of it: the
    step undoes them with the rest of the environment, through
    :func:`orchestrator_fsm._process.undoable`. Restore writes only what
    differs. torch accepts ``set_num_interop_threads`` at most once per process and
    never after parallel work started, so the inter-op count is only written when it
    really changed, and a refusal is logged rather than raised. A matplotlib first
    imported after capture keeps its backend.
    """

    num_threads: int
    num_interop_threads: int
    warning_filters: tuple[Any, ...]
    matplotlib_backend: str | None

    @classmethod
    def capture(cls) -> RuntimeState:
        """Snapshot thread counts, warning filters and the matplotlib backend."""
        return cls(
            num_threads=torch.get_num_threads(),
            num_interop_threads=torch.get_num_interop_threads(),
            warning_filters=tuple(warnings.filters),
            matplotlib_backend=_matplotlib_backend(),
        )

    def restore(self) -> None:
        """Put every captured value back; values that did not change are not written."""
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        if torch.get_num_interop_threads() != self.num_interop_threads:
            try:
                torch.set_num_interop_threads(self.num_interop_threads)
            except RuntimeError as error:
                logger.warning(
                    "could not restore torch inter-op threads to %d (now %d): %s",
                    self.num_interop_threads,
                    torch.get_num_interop_threads(),
                    error,
                )
        if list(warnings.filters) != list(self.warning_filters):
            # In place: code that holds a reference to the list keeps seeing the truth.
            cast(list[Any], warnings.filters)[:] = self.warning_filters
            _mark_warning_filters_changed()
        matplotlib: Any = sys.modules.get("matplotlib")
        if (
            matplotlib is not None
            and self.matplotlib_backend is not None
            and _matplotlib_backend() != self.matplotlib_backend
        ):
            matplotlib.use(self.matplotlib_backend)


def step(run: RunContext) -> Undo:
    """Phase 2: ``thread_applier(num_workers)`` then ``system_configurator()``.

    Records the applied thread count on ``run``, and why (``run.thread_basis``); the
    undo restores thread counts, warning filters, the matplotlib backend and every
    environment variable set.
    """

    num_workers = run.cfg.hardware.effective_num_workers

    def configure() -> None:
        # Why the count is what it is, for the report: worked out before the applier
        # exports its own OMP_NUM_THREADS.
        try:
            expected, basis = choose_cpu_threads(
                num_workers, run.cfg.hardware.cpu_threads, ranks_on_node=run.launch.local_world_size
            )
        except ValueError:
            expected, basis = -1, ""
        run.applied_threads = int(run.deps.thread_applier(num_workers))
        run.thread_basis = basis if run.applied_threads == expected else "thread_applier"
        run.deps.system_configurator()

    _, undo = undoable(configure, RuntimeState.capture())
    return undo
