"""Two runs' results side by side: their ``metrics.jsonl`` streams and checkpoint files.

:func:`compare_runs` walks both metrics streams line by line (rank 0's file; each
line's ``kind``, ``step`` and values, not its time or attempt; a step a resumed attempt
logged again counts once, as the later attempt logged it) and gives a :class:`Verdict`:
``identical`` when every value is bit-for-bit equal, ``within tolerance`` when every
value is within ``atol + rtol * |original|`` and some are not equal, else ``diverged``
at the first line where a value is out of tolerance or the streams part (a name or a
step missing on one side, one stream longer). Metrics named by ``ignore`` (shell-style
patterns; by default durations, :data:`DEFAULT_IGNORED`) are left out: wall-clock
times never repeat.

Checkpoints: every file under ``checkpoints/`` of either run is hashed (SHA-256). Two
files that differ in bytes but are torch checkpoints (``.pt``, ``.pth``, ``.ckpt``)
holding equal tensors count as equal (their other fields, such as a timing, may
differ); any other difference in a checkpoint makes the runs diverged.
"""

from __future__ import annotations

import fnmatch
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from orchestrator_fsm.layout import CHECKPOINTS_DIR, METRICS_FILE
from orchestrator_fsm.lifecycle.metrics import (
    SUMMARY_KIND,
    effective_lines,
    json_number,
    line_values,
    read_lines,
    same_value,
)

__all__ = [
    "DEFAULT_IGNORED",
    "DIVERGED",
    "IDENTICAL",
    "WITHIN_TOLERANCE",
    "Verdict",
    "checkpoint_hashes",
    "compare_runs",
    "read_metrics",
]

IDENTICAL: Final = "identical"
WITHIN_TOLERANCE: Final = "within tolerance"
DIVERGED: Final = "diverged"

DEFAULT_IGNORED: Final = ("*seconds", "*_s", "*_time")
"""Metrics left out of the comparison unless ``ignore`` says otherwise: durations."""

_TORCH_SUFFIXES: Final = (".pt", ".pth", ".ckpt")


@attrs.frozen
class Verdict:
    """How a run's results compare with the original's.

    ``status`` is :data:`IDENTICAL`, :data:`WITHIN_TOLERANCE` or :data:`DIVERGED`;
    ``step`` the step where they diverged (``None`` for a summary line or a line
    without a step, see ``where``); ``first`` the first differing values as
    ``{name: (original, rerun)}``; ``checkpoints`` per checkpoint file ``equal``,
    ``same tensors``, ``differ``, ``only in original``, ``only in rerun``."""

    status: str
    where: str | None = None
    step: int | None = None
    first: Mapping[str, tuple[Any, Any]] = attrs.field(factory=dict)
    max_abs_diff: float = 0.0
    lines: tuple[int, int] = (0, 0)
    ignored: tuple[str, ...] = ()
    checkpoints: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def headline(self) -> str:
        """One line: ``identical``, ``within tolerance (...)``, ``diverged at step N: ...``."""
        if self.status == IDENTICAL:
            return IDENTICAL
        if self.status == WITHIN_TOLERANCE:
            return f"{WITHIN_TOLERANCE} (largest difference {self.max_abs_diff:.3g})"
        values = ", ".join(f"{name} {a!r} vs {b!r}" for name, a, b in self._first_rows())
        return f"{DIVERGED} at {self.where}" + (f": {values}" if values else "")

    def _first_rows(self) -> list[tuple[str, Any, Any]]:
        return [(name, pair[0], pair[1]) for name, pair in self.first.items()]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "headline": self.headline,
            "where": self.where,
            "step": self.step,
            "first": {name: [_json_value(v) for v in pair] for name, pair in self.first.items()},
            "max_abs_diff": self.max_abs_diff,
            "lines": list(self.lines),
            "ignored": list(self.ignored),
            "checkpoints": dict(self.checkpoints),
        }


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Rank 0's metrics lines of the run in ``run_dir`` as its results (none when there
    is no file): a step a resumed attempt logged again is taken from the later attempt
    only (see :func:`~orchestrator_fsm.lifecycle.metrics.effective_lines`); a line that
    is not a JSON object is skipped."""
    return [dict(line) for line in effective_lines(read_lines(Path(run_dir) / METRICS_FILE))]


def _where(line: Mapping[str, Any], index: int) -> tuple[str, int | None]:
    step = line.get("step")
    if line.get("kind") == SUMMARY_KIND:
        return "the summary", None
    if isinstance(step, int):
        return f"step {step}", step
    return f"metrics line {index + 1}", None


def _ignored(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _values(line: Mapping[str, Any], patterns: Sequence[str]) -> dict[str, Any]:
    return {key: value for key, value in line_values(line).items() if not _ignored(key, patterns)}


def _hash_tensors(path: Path) -> str | None:
    """SHA-256 over every tensor in a torch checkpoint (path in the structure, dtype,
    shape, bytes); ``None`` when it cannot be loaded as weights."""
    try:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    digest = hashlib.sha256()

    def walk(value: Any, where: str) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().contiguous().cpu()
            digest.update(f"{where}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            if tensor.numel():
                digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            for key in sorted(value, key=str):
                walk(value[key], f"{where}.{key}")
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{where}[{index}]")

    walk(data, "")
    return digest.hexdigest()


def checkpoint_hashes(run_dir: Path) -> dict[str, str]:
    """``{path under checkpoints/: SHA-256}`` of every file of the run's checkpoints."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return {}
    hashes: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashes[path.relative_to(folder).as_posix()] = hashlib.sha256(
                path.read_bytes()
            ).hexdigest()
    return hashes


def _compare_checkpoints(original: Path, rerun: Path) -> dict[str, str]:
    a, b = checkpoint_hashes(original), checkpoint_hashes(rerun)
    outcome: dict[str, str] = {}
    for name in sorted(a.keys() | b.keys()):
        if name not in b:
            outcome[name] = "only in original"
        elif name not in a:
            outcome[name] = "only in rerun"
        elif a[name] == b[name]:
            outcome[name] = "equal"
        elif name.endswith(_TORCH_SUFFIXES) and (
            (tensors := _hash_tensors(original / CHECKPOINTS_DIR / name)) is not None
            and tensors == _hash_tensors(rerun / CHECKPOINTS_DIR / name)
        ):
            outcome[name] = "same tensors"
        else:
            outcome[name] = "differ"
    return outcome


def _json_value(value: Any) -> Any:
    return json_number(value) if isinstance(value, float) else value


def _close(a: Any, b: Any, rtol: float, atol: float) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(b, a, rel_tol=0.0, abs_tol=atol + rtol * abs(a))
    return bool(a == b)


def compare_runs(
    original: Path,
    rerun: Path,
    *,
    rtol: float = 0.0,
    atol: float = 0.0,
    ignore: Iterable[str] = DEFAULT_IGNORED,
) -> Verdict:
    """The verdict of ``rerun``'s results against ``original``'s (see the module)."""
    patterns = tuple(ignore)
    lines_a, lines_b = read_metrics(original), read_metrics(rerun)
    ignored = sorted(
        {
            key
            for line in (*lines_a, *lines_b)
            for key in line_values(line)
            if _ignored(key, patterns)
        }
    )
    checkpoints = _compare_checkpoints(Path(original), Path(rerun))
    largest = 0.0

    def verdict(
        status: str,
        where: str | None = None,
        step: int | None = None,
        first: Mapping[str, tuple[Any, Any]] | None = None,
    ) -> Verdict:
        return Verdict(
            status,
            where,
            step,
            dict(first or {}),
            largest,
            (len(lines_a), len(lines_b)),
            tuple(ignored),
            checkpoints,
        )

    exact = True
    for index in range(max(len(lines_a), len(lines_b))):
        if index >= len(lines_a) or index >= len(lines_b):
            side = "rerun" if index >= len(lines_a) else "original"
            longer = lines_b if side == "rerun" else lines_a
            where, step = _where(longer[index], index)
            return verdict(DIVERGED, f"{where} (only the {side} logged it)", step)
        a, b = lines_a[index], lines_b[index]
        where, step = _where(a, index)
        va, vb = _values(a, patterns), _values(b, patterns)
        differing = {
            name: (va.get(name), vb.get(name))
            for name in [*va, *(n for n in vb if n not in va)]
            if not same_value(va.get(name), vb.get(name))
        }
        if a.get("kind") != b.get("kind") or a.get("step") != b.get("step"):
            other, _ = _where(b, index)
            return verdict(DIVERGED, f"{where} (the rerun logged {other} there)", step, differing)
        if not differing:
            continue
        exact = False
        out = {name: pair for name, pair in differing.items() if not _close(*pair, rtol, atol)}
        if out:
            return verdict(DIVERGED, where, step, out)
        for x, y in differing.values():
            if isinstance(x, (int, float)) and isinstance(y, (int, float)):
                largest = max(largest, abs(float(y) - float(x)))
    bad = [name for name, state in checkpoints.items() if state not in ("equal", "same tensors")]
    if bad:
        return verdict(DIVERGED, f"checkpoint {', '.join(bad)}")
    return verdict(IDENTICAL if exact else WITHIN_TOLERANCE)
