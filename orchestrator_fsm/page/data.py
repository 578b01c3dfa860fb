"""What a run's page shows, read from its run directory: the record and its ranks
(``lifecycle.record.read_run``), the journal split by attempt, every rank's metrics,
the saved config, environment report, git state, files and reruns."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import attrs

from orchestrator_fsm.layout import (
    GIT_DIFF_FILE,
    GIT_INFO_FILE,
    JOURNAL_FILE,
    REPORT_FILE,
    REPORTS_DIR,
    RERUNS_FILE,
    RUN_FILE,
    RUN_SUBDIRECTORIES,
    config_file,
    metrics_file,
)
from orchestrator_fsm.lifecycle.machine import TransitionRecord
from orchestrator_fsm.lifecycle.metrics import (
    METRICS_KIND,
    SUMMARY_KIND,
    line_attempt,
    line_values,
    read_lines,
)
from orchestrator_fsm.lifecycle.record import (
    PipelineSpan,
    RunRecord,
    pipeline_spans,
    read_run,
)
from orchestrator_fsm.lifecycle.table import MACHINE_STEPS, ROLLBACK_STEP
from orchestrator_fsm.status import COMPLETED, RUNNING

__all__ = [
    "AttemptView",
    "MetricSeries",
    "RunView",
    "read_run_view",
]

#: How many files of one run sub-folder the page lists before summarising the rest.
_FILES_SHOWN: Final = 50
#: How much of a text file (config, git state) the page embeds.
_TEXT_LIMIT: Final = 200_000
_RANK_METRICS: Final = re.compile(r"metrics\.rank(\d+)\.jsonl")


@attrs.frozen
class AttemptView:
    """One attempt of the run: its entry in ``run.json`` (when there is one) and the
    transitions rank 0 journaled during it."""

    number: int
    status: str
    reason: str | None
    started_at: datetime | None
    ended_at: datetime | None
    transitions: tuple[TransitionRecord, ...]
    spans: tuple[PipelineSpan, ...]

    @property
    def failed_transition(self) -> TransitionRecord | None:
        """The step that raised in this attempt (not the rollback that followed)."""
        return next((t for t in self.transitions if not t.ok and t.step not in MACHINE_STEPS), None)

    @property
    def pipeline_failed(self) -> bool:
        """Whether the caller's own work ended this attempt (it raised, or a signal
        stopped it): no step failed, and the attempt did not complete."""
        return (
            self.status not in (COMPLETED, RUNNING)
            and self.failed_transition is None
            and bool(self.spans)
        )

    @property
    def rolled_back(self) -> bool:
        return any(t.step == ROLLBACK_STEP for t in self.transitions)

    @property
    def undone_steps(self) -> list[str]:
        """The steps whose work the rollback undid, last done first: each step that
        completed in this attempt before it failed."""
        if not self.rolled_back:
            return []
        return [t.step for t in reversed(self.transitions) if t.ok and t.step not in MACHINE_STEPS]


@attrs.frozen
class MetricSeries:
    """One metric as one rank logged it in one attempt: ``xs`` are steps (the line's
    index in the rank's file when it logged none), ``ys`` the values (NaN and ±inf
    kept as they were written)."""

    name: str
    rank: int
    attempt: int
    xs: tuple[float, ...]
    ys: tuple[float, ...]

    @property
    def label(self) -> str:
        return f"rank {self.rank} · attempt {self.attempt}"


@attrs.frozen
class RunView:
    """Everything a run's page shows, read once."""

    record: RunRecord
    attempts: tuple[AttemptView, ...]
    metrics: Mapping[str, tuple[MetricSeries, ...]]
    summaries: Mapping[int, Mapping[str, float]]
    config_text: str | None
    environment: Mapping[str, Any]
    git_text: str | None
    git_diff: bool
    files: Mapping[str, tuple[list[str], int]]
    reruns: tuple[Mapping[str, Any], ...]


def _journal(root: Path) -> list[tuple[int, TransitionRecord]]:
    """The journal's transitions with the attempt each was made in (torn or foreign
    lines skipped, as ``read_run`` does)."""
    try:
        text = (root / JOURNAL_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        try:
            data = json.loads(line)
            found.append((line_attempt(data), TransitionRecord.from_json(data)))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return found


def _attempts(record: RunRecord) -> tuple[AttemptView, ...]:
    by_attempt: dict[int, list[TransitionRecord]] = {}
    for number, transition in _journal(record.root):
        by_attempt.setdefault(number, []).append(transition)
    known = {attempt.number: attempt for attempt in record.attempts}
    views = []
    for number in sorted({*known, *by_attempt}):
        transitions = tuple(by_attempt.get(number, ()))
        entry = known.get(number)
        views.append(
            AttemptView(
                number=number,
                status=entry.status if entry is not None else "unknown",
                reason=None if entry is None else entry.reason,
                started_at=None if entry is None else entry.started_at,
                ended_at=None if entry is None else entry.ended_at,
                transitions=transitions,
                spans=tuple(pipeline_spans(transitions)),
            )
        )
    if views and views[-1].status == "running":
        # The last attempt's status is the run's, as its readers decide it (crashed...).
        views[-1] = attrs.evolve(views[-1], status=record.effective_status)
    return tuple(views)


def _metric_files(root: Path, world_size: int | None) -> dict[int, Path]:
    files = {0: metrics_file(root, 0)}
    for rank in range(1, world_size or 1):
        files[rank] = metrics_file(root, rank)
    # Ranks beyond the recorded world size (an attempt that ran with more) too.
    for path in root.glob("metrics.rank*.jsonl"):
        found = _RANK_METRICS.fullmatch(path.name)
        if found is not None:
            files.setdefault(int(found.group(1)), path)
    return dict(sorted(files.items()))


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def read_metrics(
    root: Path, world_size: int | None
) -> tuple[dict[str, tuple[MetricSeries, ...]], dict[int, dict[str, float]]]:
    """Every rank's metrics of the run in ``root`` as series per metric name (one per
    rank and attempt), and each rank's summary."""
    points: dict[str, dict[tuple[int, int], tuple[list[float], list[float]]]] = {}
    summaries: dict[int, dict[str, float]] = {}
    for rank, path in _metric_files(root, world_size).items():
        for index, line in enumerate(read_lines(path)):
            kind = line.get("kind")
            values = line_values(line)
            if kind == SUMMARY_KIND:
                summaries.setdefault(rank, {}).update(
                    {k: v for k, v in values.items() if _number(v) is not None}
                )
                continue
            if kind != METRICS_KIND:
                continue
            step = line.get("step")
            x = float(step) if isinstance(step, int) and not isinstance(step, bool) else index
            key = (rank, line_attempt(line))
            for name, value in values.items():
                y = _number(value)
                if y is None:
                    continue
                xs, ys = points.setdefault(name, {}).setdefault(key, ([], []))
                xs.append(float(x))
                ys.append(y)
    metrics = {
        name: tuple(
            MetricSeries(name, rank, attempt, tuple(xs), tuple(ys))
            for (rank, attempt), (xs, ys) in sorted(series.items())
        )
        for name, series in points.items()
    }
    return metrics, summaries


def count_non_finite(series: Sequence[MetricSeries]) -> dict[str, int]:
    """How many NaN, +inf and -inf values ``series`` hold together."""
    counts = {"NaN": 0, "+inf": 0, "-inf": 0}
    for item in series:
        for y in item.ys:
            if math.isnan(y):
                counts["NaN"] += 1
            elif y == math.inf:
                counts["+inf"] += 1
            elif y == -math.inf:
                counts["-inf"] += 1
    return {name: count for name, count in counts.items() if count}


def _text(path: Path) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read(_TEXT_LIMIT + 1)
    except OSError:
        return None
    if len(text) > _TEXT_LIMIT:
        text = text[:_TEXT_LIMIT] + f"\n... (cut at {_TEXT_LIMIT} characters)"
    return text


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _files(root: Path) -> dict[str, tuple[list[str], int]]:
    """Per run sub-folder (and the run directory's own files, under ``""``): the
    first file names, sorted, and how many there are."""
    folders: dict[str, tuple[list[str], int]] = {}
    own = sorted(p.name for p in root.iterdir() if p.is_file()) if root.is_dir() else []
    folders[""] = (own[:_FILES_SHOWN], len(own))
    for name in RUN_SUBDIRECTORIES:
        folder = root / name
        if folder.is_dir():
            names = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            folders[name] = (names[:_FILES_SHOWN], len(names))
    return folders


def _reruns(root: Path) -> tuple[dict[str, Any], ...]:
    return tuple(read_lines(root / RERUNS_FILE))


def read_run_view(root: Path | str) -> RunView:
    """The page's view of the run directory ``root``. Raises ``FileNotFoundError`` when
    it holds no ``run.json`` and ``ValueError`` when that is not a JSON object."""
    root = Path(root).absolute()
    if not (root / RUN_FILE).is_file():
        raise FileNotFoundError(f"{root} holds no {RUN_FILE}; expected a run directory")
    record = read_run(root)
    metrics, summaries = read_metrics(root, record.world_size)
    if not summaries.get(0) and record.summary:
        summaries[0] = dict(record.summary)
    return RunView(
        record=record,
        attempts=_attempts(record),
        metrics=metrics,
        summaries=summaries,
        config_text=_text(config_file(root)),
        environment=_json(root / REPORTS_DIR / REPORT_FILE),
        git_text=_text(root / REPORTS_DIR / GIT_INFO_FILE),
        git_diff=(root / REPORTS_DIR / GIT_DIFF_FILE).is_file(),
        files=_files(root),
        reruns=_reruns(root),
    )
