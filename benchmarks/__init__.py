"""Performance benchmarks of orchestrator-fsm's lifecycle.

Run them from the repository root with ``make bench`` or ``python -m benchmarks``
(``--quick`` for a tiny run, ``--only SECTION`` for one section, ``--json PATH`` to keep
the numbers). Sections:

- ``warm``: enter -> report -> exit, many times in one process, with per-step medians;
- ``floor``: the same system calls made by minimal hand-written code, and our ratio to it;
- ``cold``: a fresh interpreter doing one round trip, minus one that only imports torch;
- ``cli``: the command's quick sub-commands (``--help``, ``--version``, ``validate``,
  ``inspect``, ``diagram``, ``runs``), spawn to exit, and whether any imported torch;
- ``scale``: existing run directories, concurrent processes, and the bare machine's
  cost per ``advance()``;
- ``capture``: round trips with log capture and metrics unused, as shipped and with
  those code paths bypassed, and the MLflow observer's cost per ``log_metrics`` call;
- ``orchard``: the reference system's mini-CNN recipe, strict and not, started in a git
  checkout: warm against the floor (and on a terminal), first round trip, cold;
- ``sacred``: the same recipe in a git checkout, ours against Sacred with its
  ``FileStorageObserver`` (bare, and with the manifest ours keeps written by hand);
  skipped when Sacred is not installed (``pip install -e ".[bench]"``);
- ``join``: joining one run: the time from rank 0's READY to every rank's under real
  torchrun and ``torch.multiprocessing.spawn`` launches of 2, 4, 8 and 16 ranks, and
  the file-system operations a waiting
  rank's polling costs, counted (``strace``) and scaled to 1,000 ranks.

Everything is written under a temporary directory that is removed afterwards, with
``XDG_CACHE_HOME`` and the lock path pointing into it and the working directory set to
it, so a run never touches the user's cache and never runs ``git`` on a checkout unless
a measurement says it does. ``benchmarks/README.md`` holds the latest results.
"""

from __future__ import annotations

from typing import Final

#: The sections ``--only`` accepts, in the order they run.
SECTIONS: Final = (
    "warm",
    "floor",
    "cold",
    "cli",
    "scale",
    "capture",
    "orchard",
    "sacred",
    "join",
)
