"""Small file-system helpers shared by every phase: atomic writes and slugs."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import threading
from collections.abc import Callable
from json.encoder import encode_basestring_ascii as _json_string
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "append_whole",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_with",
    "fsync_directory",
    "json_text",
    "new_file_mode",
    "slugify",
    "temporary_target",
]

_SLUG_DROP = re.compile(r"[^a-z0-9_-]+")
_SLUG_DASHES = re.compile(r"-{2,}")


_UMASK_LINE = re.compile(rb"^Umask:\s*([0-7]+)$", re.MULTILINE)
_umask_lock = threading.Lock()


@functools.cache
def _umask_at_first_use() -> int:
    # Setting the umask is the only portable way to read it; done once, under a lock,
    # because another thread creating a file meanwhile would get the wrong mode.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _umask() -> int:
    """The process's umask now: Linux reports it in /proc without changing it."""
    try:
        with open("/proc/self/status", "rb") as status:
            found = _UMASK_LINE.search(status.read())
    except OSError:
        found = None
    return int(found.group(1), 8) if found else _umask_at_first_use()


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~_umask()


# The temporary file beside ``name``: ``.<name>.<8 hex digits>.tmp``.
_TEMPORARY_NAME = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC


def _temporary_beside(path: Path) -> tuple[int, str]:
    """A new, empty file in ``path``'s directory, opened for writing: its fd and name.

    Created with mode ``0o666``, which the kernel narrows by the umask (or the folder's
    default ACL) exactly as for any file ``open()`` creates, so the file needs no
    ``chmod`` and the umask need not be read.
    """
    for _ in range(100):
        name = os.path.join(path.parent, f".{path.name}.{os.urandom(4).hex()}.tmp")
        try:
            return os.open(name, _TMP_FLAGS, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path} after 100 tries")


def _opened_through(through: Path | None, path: Path) -> tuple[int, str]:
    """``through`` emptied and opened for writing when it exists, else a new temporary
    file beside ``path``: its fd and name."""
    if through is not None:
        try:
            return os.open(through, os.O_WRONLY | os.O_TRUNC | _CLOEXEC), os.fspath(through)
        except FileNotFoundError:
            pass
    return _temporary_beside(path)


def atomic_write_bytes(
    path: Path, data: bytes, *, fsync: bool = True, through: Path | None = None
) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the new one.

    The bytes go to a temporary file in the same directory, are written out (and
    fsynced unless ``fsync`` is False), then renamed over ``path``. The file gets the
    mode any new file gets (``0o666`` less the umask). On any error the temporary file
    is removed and ``path`` is untouched.

    ``through``: a file of the writer's own in ``path``'s directory, which no reader
    opens and which was created as a temporary file is (mode ``0o666`` less the umask),
    to use as the temporary file when it exists: emptied, written, renamed over
    ``path`` (gone afterwards, removed on any error). Creating a file costs the
    file system far more than rewriting one that exists (a new inode).
    """
    path = Path(path)
    fd, tmp_name = _opened_through(through, path)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def atomic_write_text(
    path: Path, text: str, *, fsync: bool = True, through: Path | None = None
) -> None:
    """Atomically write ``text`` (UTF-8) to ``path``; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync, through=through)


def json_text(payload: Any) -> str:
    """``payload`` as the JSON files of a run hold it: indented by two spaces, keys
    sorted, what JSON has no type for as its ``str``, and a final newline.

    The text of ``json.dumps(payload, indent=2, sort_keys=True, default=str)``, made
    about twice as fast (the standard library encodes indented JSON in Python, with a
    generator per container); what this encoder leaves (a key that is not a string, a
    cycle) goes to ``json.dumps`` itself.
    """
    out: list[str] = []
    try:
        _put_json(payload, out, "\n")
    except (_NotPlainJson, TypeError, RecursionError):
        return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    out.append("\n")
    return "".join(out)


class _NotPlainJson(Exception):
    """What :func:`_put_json` leaves to ``json.dumps``."""


_INFINITY = float("inf")
_PLAIN_TYPES = frozenset({str, dict, list, tuple, int, float, bool, type(None)})


def _put_json(value: Any, out: list[str], pad: str) -> None:
    """Append ``value``'s indented JSON to ``out`` as ``json.dumps`` writes it; ``pad``
    is the newline and the indentation of the line ``value`` starts on."""
    kind = type(value)
    if kind not in _PLAIN_TYPES:
        # A subclass is written as json writes it (tested in json's order), anything
        # else as its str (default=str).
        if isinstance(value, str):
            kind = str
        elif isinstance(value, int):
            kind = int
        elif isinstance(value, float):
            kind = float
        elif isinstance(value, (list, tuple)):
            kind = list
        elif isinstance(value, dict):
            kind = dict
        else:
            value, kind = str(value), str
    if kind is str:
        out.append(_json_string(value))
    elif kind is dict:
        if not value:
            out.append("{}")
            return
        inner = pad + "  "
        between = "{" + inner
        for key, item in sorted(value.items()):
            if not isinstance(key, str):
                raise _NotPlainJson
            out.append(between)
            out.append(_json_string(key))
            out.append(": ")
            _put_json(item, out, inner)
            between = "," + inner
        out.append(pad + "}")
    elif kind is list or kind is tuple:
        if not value:
            out.append("[]")
            return
        inner = pad + "  "
        between = "[" + inner
        for item in value:
            out.append(between)
            _put_json(item, out, inner)
            between = "," + inner
        out.append(pad + "]")
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int:
        out.append(int.__repr__(value))
    elif value != value:
        out.append("NaN")
    elif value == _INFINITY:
        out.append("Infinity")
    elif value == -_INFINITY:
        out.append("-Infinity")
    else:
        out.append(float.__repr__(value))


def atomic_write_json(path: Path, payload: Any, *, fsync: bool = True) -> None:
    """Atomically write ``payload`` as :func:`json_text` has it."""
    atomic_write_text(path, json_text(payload), fsync=fsync)


def fsync_directory(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename or an unlink in it) to the disk."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_with(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write`` with a binary file whose bytes replace ``path`` all at once.

    What ``write`` writes goes to a temporary file in ``path``'s directory (named as
    :func:`temporary_target` recognises), which is flushed, fsynced, renamed over
    ``path``, and the directory fsynced: after a crash or a power cut, ``path`` is
    the old file or the whole new one. On any error (``write``'s own, a full disk at
    a write, the flush or the fsync) the temporary file is removed, ``path`` is
    untouched and the error is raised. A process killed mid-write leaves its
    temporary file behind; nothing else.
    """
    path = Path(path)
    fd, tmp_name = _temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    fsync_directory(path.parent)


def temporary_target(name: str) -> str | None:
    """The name of the file an atomic write of this module was writing when it made
    the temporary file ``name`` (one a killed process left behind, or a write still
    running); None when ``name`` is not such a temporary file."""
    found = _TEMPORARY_NAME.fullmatch(name)
    return None if found is None else found.group(1)


def append_whole(path: Path, text: str) -> None:
    """Append ``text`` (UTF-8) to ``path`` entirely or not at all.

    When the write fails part-way (a full disk), the file is cut back to its previous
    length, so readers never see half a line; the error is raised.
    """
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, before)
            raise
    finally:
        os.close(fd)


def slugify(value: object, *, max_length: int = 40, fallback: str = "x") -> str:
    """Reduce ``value`` to ``[a-z0-9_-]`` so it is safe inside a file or directory name.

    Separators, dots (hence ``..``), whitespace and control characters all become
    dashes, runs of dashes collapse, leading/trailing dashes and underscores go, and
    the result is cut to ``max_length``. An empty result becomes ``fallback``.
    """
    text = _SLUG_DROP.sub("-", str(value).lower())
    text = _SLUG_DASHES.sub("-", text).strip("-_")
    text = text[:max_length].strip("-_")
    return text or fallback
