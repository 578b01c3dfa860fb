"""The files a run's record lives in, and how each is written.

- The record (``run.json`` on rank 0, ``ranks/rank<N>.json`` on rank N): replaced
  atomically (temporary file, fsync, rename), so a failed write keeps the previous
  complete file (:func:`write_record`).
- The disk reserve (:data:`~orchestrator_fsm.layout.RESERVE_FILE`): real disk space
  kept aside while the run is live and handed back just before the last writes, so a
  run that fills its disk still ends with its true status (:func:`keep_reserve`,
  :func:`release_reserve`); the record's last write goes through the emptied reserve
  rather than a new temporary file.
- The journal (``lifecycle.jsonl``): one JSON line per transition, appended whole
  (:class:`Journal`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final

from orchestrator_fsm._fs import append_whole, atomic_write_text, json_text
from orchestrator_fsm.layout import JOURNAL_FILE, RESERVE_FILE
from orchestrator_fsm.redaction import redact_secrets

if TYPE_CHECKING:
    from orchestrator_fsm.lifecycle.machine import TransitionRecord
    from orchestrator_fsm.lifecycle.record import RunRecord

__all__ = [
    "MIN_RESERVE_BYTES",
    "Journal",
    "discard_reserve",
    "keep_reserve",
    "record_text",
    "release_reserve",
    "write_record",
]

#: The least space kept aside in the run directory for the record's last writes.
MIN_RESERVE_BYTES: Final = 64 * 1024


def record_text(record: RunRecord) -> str:
    """The record's file as written: its ``to_json`` form, secrets redacted."""
    return json_text(redact_secrets(record.to_json()))


def write_record(path: Path, record: RunRecord, *, through: Path | None = None) -> int:
    """Replace ``path`` with ``record`` atomically and return the length of its text;
    raises the ``OSError`` of a failed write (the previous file stays whole).
    ``through``: the emptied reserve, written and renamed instead of a new temporary
    file when it is there (see :func:`~orchestrator_fsm._fs.atomic_write_bytes`)."""
    text = record_text(record)
    atomic_write_text(path, text, through=through)
    return len(text)


def keep_reserve(root: Path, record_size: int) -> None:
    """Put space aside in the run directory ``root`` for the last writes of a record of
    about ``record_size`` bytes; raises the ``OSError`` when there is not that much."""
    _fill(root / RESERVE_FILE, max(MIN_RESERVE_BYTES, 8 * record_size))


def release_reserve(root: Path) -> Path | None:
    """Hand the space kept aside in ``root`` back: the reserve is emptied, and is
    returned for the record's last write to go through (:func:`write_record`), which
    renames it over the record; None when there is none."""
    path = root / RESERVE_FILE
    try:
        os.truncate(path, 0)
    except OSError:
        discard_reserve(root)
        return None
    return path


def discard_reserve(root: Path) -> None:
    """Remove the reserve of ``root`` (nothing when there is none)."""
    with contextlib.suppress(OSError):
        os.unlink(root / RESERVE_FILE)


def _fill(path: Path, size: int) -> None:
    """Create ``path`` anew holding ``size`` bytes of real disk space (raises when there
    is none), with the mode of any new file (``0o666`` less the umask): the record's
    last write goes through it as through a temporary file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:  # an attempt that was killed left its reserve
        os.unlink(path)
        fd = os.open(path, flags, 0o666)
    try:
        block = bytes(min(size, 64 * 1024))
        left = size
        while left > 0:
            left -= os.write(fd, block[:left])
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """``lifecycle.jsonl`` of one run directory: every transition of the machine, in
    order, each line marked with the process and the attempt.

    A failed append is reported (``report_once``) and its lines kept for the next
    one, so the journal stays a prefix of the machine's history.
    """

    def __init__(self, report_once: Callable[[str, str], None]) -> None:
        self._report_once = report_once
        self._written = 0

    def append(
        self, root: Path, history: Sequence[TransitionRecord], attempt: int
    ) -> Sequence[TransitionRecord]:
        """Append what ``history`` holds beyond the last call to the journal in
        ``root``; returns those transitions (whether or not the append succeeded)."""
        fresh = history[self._written :]
        if not fresh:
            return fresh
        lines = []
        for item in fresh:
            line = redact_secrets(dict(item.to_json(), pid=os.getpid(), attempt=attempt))
            lines.append(json.dumps(line, sort_keys=True))
        path = root / JOURNAL_FILE
        try:
            append_whole(path, "\n".join(lines) + "\n")
        except OSError as exc:
            # Kept for the next append: the journal stays a prefix of the history.
            self._report_once("journal", f"could not append to {path} ({exc})")
        else:
            self._written = len(history)
        return fresh
