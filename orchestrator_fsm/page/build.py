"""The pages themselves: one run's (:func:`render_run_page`) and several runs'
(:func:`render_comparison_page`), as self-contained HTML text rendered by Jinja2
templates (autoescaped) with the charts inlined as SVG; and :func:`write_pages`,
which decides from a folder which page it is and writes it (atomically)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

import attrs

from orchestrator_fsm._fs import atomic_write_text
from orchestrator_fsm._version import __version__
from orchestrator_fsm.layout import (
    BUNDLE_FILE,
    PAGE_FILE,
    REPORTS_DIR,
    RUN_FILE,
    SWEEP_FILE,
    SWEEPS_DIR,
)
from orchestrator_fsm.lifecycle.machine import TransitionRecord
from orchestrator_fsm.lifecycle.metrics import effective_lines, read_lines
from orchestrator_fsm.lifecycle.record import PIPELINE_STEP, RunRecord, read_run
from orchestrator_fsm.lifecycle.table import CLEANUP_STEP, ROLLBACK_STEP, table_steps
from orchestrator_fsm.page.data import (
    AttemptView,
    MetricSeries,
    RunView,
    count_non_finite,
    read_run_view,
)
from orchestrator_fsm.page.diagram import interrupted, path_svg
from orchestrator_fsm.page.svg import (
    DASHES,
    PALETTE,
    Bar,
    GanttRow,
    Marker,
    PlotSeries,
    gantt_svg,
    line_plot_svg,
)
from orchestrator_fsm.reproduce.drift import flatten
from orchestrator_fsm.status import COMPLETED, FAILED, INTERRUPTIONS, RUNNING

__all__ = ["PageTarget", "find_runs", "render_comparison_page", "render_run_page", "write_pages"]

#: The environment report's sections the page shows, in order.
_ENVIRONMENT_SECTIONS: Final = (
    "determinism", "seeds", "threads", "distributed", "hardware", "versions", "environment",
)  # fmt: skip


def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("orchestrator_fsm.page", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    from orchestrator_fsm.phases.timing import format_duration

    return format_duration(value)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _status_class(status: str) -> str:
    if status == COMPLETED:
        return "ok"
    if status == RUNNING:
        return "running"
    if status in INTERRUPTIONS:
        return "interrupted"
    return "bad"


def _bar_kind(transition: TransitionRecord) -> str:
    if not transition.ok:
        return "interrupted" if interrupted(transition.error) else "failed"
    if transition.step == ROLLBACK_STEP:
        return "rollback"
    return "cleanup" if transition.step == CLEANUP_STEP else "ok"


def _rank_bars(rank: RunRecord, start: datetime) -> tuple[Bar, ...]:
    """Another rank's steps, laid out one after the other from its start in lifecycle
    order (its record keeps each step's duration, not when it ran)."""
    if rank.started_at is None:
        return ()
    at = (rank.started_at - start).total_seconds()
    failed_step = None if rank.error is None else rank.error.step
    bad = "interrupted" if rank.status in INTERRUPTIONS else "failed"
    order = [step for step in table_steps() if step in rank.phases]
    order += [PIPELINE_STEP] if PIPELINE_STEP in rank.phases else []
    order += [step for step in rank.phases if step not in order]
    bars = []
    for step in order:
        duration = float(rank.phases[step])
        kind = "pipeline" if step == PIPELINE_STEP else "ok"
        if step == failed_step:
            kind = bad
        elif step == CLEANUP_STEP:
            kind = "cleanup"
        bars.append(Bar(at, duration, step, kind))
        at += duration
    if failed_step is not None and failed_step not in rank.phases:
        bars.append(Bar(at, 0.0, failed_step, bad, str(rank.error)))
    return tuple(bars)


def _attempt_chart(view: RunView, attempt: AttemptView, last: bool) -> str:
    record = view.record
    starts = [t.started_at for t in attempt.transitions]
    start = attempt.started_at or (min(starts) if starts else None)
    if start is None:
        return ""
    bars: list[Bar] = []
    spans = {span.after: span for span in attempt.spans}
    for index, transition in enumerate(attempt.transitions):
        at = (transition.started_at - start).total_seconds()
        bars.append(
            Bar(at, transition.duration_s, transition.step, _bar_kind(transition),
                transition.error or "")
        )  # fmt: skip
        span = spans.get(index)
        if span is not None:
            kind = "pipeline"
            note = ""
            if attempt.pipeline_failed and span is attempt.spans[-1]:
                kind = "interrupted" if attempt.status in INTERRUPTIONS else "failed"
                note = attempt.reason or ""
            bars.append(
                Bar((span.started_at - start).total_seconds(), span.duration_s, PIPELINE_STEP,
                    kind, note)
            )  # fmt: skip
    rows = [GanttRow("rank 0", tuple(bars))]
    markers: list[Marker] = []
    if last:
        for rank in record.ranks:
            rows.append(GanttRow(f"rank {rank.rank}", _rank_bars(rank, start)))
            if rank.status == FAILED and rank.ended_at is not None:
                at = (rank.ended_at - start).total_seconds()
                markers.append(Marker(at, "failure", f"rank {rank.rank} failed"))
        signal = record.interruption
        if signal is not None and signal.received_at is not None:
            at = (signal.received_at - start).total_seconds()
            markers.append(Marker(at, "signal", signal.signal))
    elif attempt.ended_at is not None and attempt.status in INTERRUPTIONS:
        at = (attempt.ended_at - start).total_seconds()
        markers.append(Marker(at, "signal", (attempt.reason or attempt.status).split(";")[0]))
    if not last and attempt.ended_at is not None:
        at = (attempt.ended_at - start).total_seconds()
        markers.append(Marker(at, "requeue", f"attempt {attempt.number + 1} next"))
    if attempt.status == FAILED and attempt.ended_at is not None and not markers:
        at = (attempt.ended_at - start).total_seconds()
        markers.append(Marker(at, "failure", "failed"))
    return gantt_svg(rows, markers, title=f"attempt {attempt.number}: steps per rank")


def _plot_series(series: Sequence[MetricSeries], attempts: int) -> list[PlotSeries]:
    return [
        PlotSeries(
            label=item.label if attempts > 1 else f"rank {item.rank}",
            color=PALETTE[item.rank % len(PALETTE)],
            dash=DASHES[(item.attempt - 1) % len(DASHES)],
            xs=item.xs,
            ys=item.ys,
            rank=item.rank,
            attempt=item.attempt,
        )
        for item in series
    ]


def _shown(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str)
    return str(value)


def _rerun_rows(view: RunView, page_dir: Path) -> list[dict[str, Any]]:
    rows = []
    for line in view.reruns:
        target = line.get("run_dir")
        link = None
        if isinstance(target, str) and target:
            folder = Path(target)
            aim = folder / PAGE_FILE if (folder / PAGE_FILE).is_file() else folder
            link = os.path.relpath(aim, page_dir)
        verdict = line.get("verdict")
        headline = verdict.get("headline") if isinstance(verdict, Mapping) else None
        rows.append(
            {
                "time": str(line.get("time", "-")),
                "run_dir": target or "-",
                "link": link,
                "exit_code": line.get("exit_code"),
                "verdict": headline or "-",
            }
        )
    return rows


def _ending(record: RunRecord) -> list[tuple[str, str]]:
    """What ended the run, as rows: the status, the scheduler's word, the error and
    where it was raised, the rank that ended the job."""
    rows = [("status", record.effective_status)]
    if record.effective_status != record.status:
        rows.append(("run.json says", record.status))
    if record.scheduler is not None:
        rows.append(("job", f"{record.scheduler.scheduler} job {record.scheduler.label}"))
    signal = record.interruption
    if signal is not None:
        rows.append(("signal", f"{signal.signal} at {_when(signal.received_at)}"))
        if signal.scheduler_state:
            said = signal.scheduler_state + (
                f" ({signal.scheduler_reason})" if signal.scheduler_reason else ""
            )
            rows.append(("scheduler said", said))
        if signal.evidence:
            rows.append(("evidence", signal.evidence))
    first = record.first_failure
    if record.failed_rank is not None:
        rows.append(("failed rank", str(record.failed_rank)))
    elif first is not None and first is not record and first.rank is not None:
        rows.append(("failed rank", str(first.rank)))
    error = record.error if record.error is not None else (first.error if first else None)
    if error is not None:
        rows.append(("error", str(error)))
        rows.append(("step", error.step))
        if error.where:
            rows.append(("raised at", error.where))
    return rows


def _rank_rows(record: RunRecord) -> list[dict[str, str]]:
    rows = [
        {
            "rank": "0",
            "status": record.status,
            "host": record.host or "-",
            "pid": str(record.pid or "-"),
            "device": record.device or "-",
            "error": "-" if record.error is None else str(record.error),
        }
    ]
    for rank in record.ranks:
        rows.append(
            {
                "rank": str(rank.rank),
                "status": rank.effective_status,
                "host": rank.host or "-",
                "pid": str(rank.pid or "-"),
                "device": rank.device or "-",
                "error": "-" if rank.error is None else str(rank.error),
            }
        )
    return rows


def run_context(view: RunView, page_dir: Path) -> dict[str, Any]:
    """The values the run template shows (everything already rendered to text or SVG)."""
    record = view.record
    attempts = []
    error_step = None if record.error is None else record.error.step
    for index, attempt in enumerate(view.attempts):
        last = index == len(view.attempts) - 1
        diagram, graphviz = path_svg(attempt)
        failed = attempt.failed_transition
        failed_step = failed.step if failed is not None else None
        if attempt.pipeline_failed:
            failed_step = error_step if last and error_step else PIPELINE_STEP
        steps_s = sum(t.duration_s for t in attempt.transitions)
        pipeline_s = sum(span.duration_s for span in attempt.spans)
        reached = attempt.transitions[-1].dest.value if attempt.transitions else "-"
        facts = [
            ("ended in state", reached),
            ("lifecycle steps", f"{len(attempt.transitions)} in {_seconds(steps_s)}"),
            ("pipeline", _seconds(pipeline_s) if attempt.spans else "-"),
        ]
        if last and record.ranks:
            facts.append(("ranks", str(1 + len(record.ranks))))
        attempts.append(
            {
                "number": attempt.number,
                "facts": facts,
                "status": attempt.status,
                "status_class": _status_class(attempt.status),
                "reason": attempt.reason,
                "started": _when(attempt.started_at),
                "ended": _when(attempt.ended_at),
                "diagram": diagram,
                "graphviz": graphviz,
                "failed_step": failed_step,
                "undone": attempt.undone_steps,
                "chart": _attempt_chart(view, attempt, last),
                "transitions": [
                    {
                        "at": t.started_at.strftime("%H:%M:%S.%f")[:-3],
                        "move": f"{t.source.value} → {t.dest.value}",
                        "step": t.step,
                        "duration": _seconds(t.duration_s),
                        "ok": t.ok,
                        "error": t.error or "",
                    }
                    for t in attempt.transitions
                ],
            }
        )
    plots = []
    for name, series in view.metrics.items():
        shown = _plot_series(series, len(view.attempts))
        plots.append(
            {
                "name": name,
                "svg": line_plot_svg(shown, title=name, plot_id=f"plot-{name}"),
                "legend": [(s.label, s.color, s.dash) for s in shown],
                "non_finite": count_non_finite(series),
                "points": sum(len(s.xs) for s in series),
            }
        )
    environment = {
        section: {k: _shown(v) for k, v in flatten(view.environment[section]).items()}
        for section in _ENVIRONMENT_SECTIONS
        if isinstance(view.environment.get(section), Mapping) and view.environment[section]
    }
    summary_names = sorted({name for values in view.summaries.values() for name in values})
    return {
        "title": f"run {record.run_id}",
        "record": record,
        "status": record.effective_status,
        "status_class": _status_class(record.effective_status),
        "started": _when(record.started_at),
        "ended": _when(record.ended_at),
        "duration": _seconds(record.duration_s),
        "entry": record.entry or record.entry_module or record.entry_point or "-",
        "ending": _ending(record),
        "attempts": attempts,
        "ranks": _rank_rows(record),
        "plots": plots,
        "summary_names": summary_names,
        "summaries": {rank: dict(values) for rank, values in sorted(view.summaries.items())},
        "config_text": view.config_text,
        "environment": environment,
        "git_text": view.git_text,
        "git_diff": view.git_diff,
        "files": view.files,
        "reruns": _rerun_rows(view, page_dir),
        "generated": _when(datetime.now(timezone.utc)),
        "version": __version__,
    }


def render_run_page(root: Path | str, page_dir: Path | None = None) -> str:
    """The page of the run directory ``root`` (links relative to ``page_dir``, by
    default ``root``)."""
    view = read_run_view(root)
    context = run_context(view, page_dir or view.record.root)
    return str(_environment().get_template("run.html.j2").render(**context))


# -- several runs ----------------------------------------------------------------------


@attrs.frozen
class PageTarget:
    """What a folder given to ``report`` is: a run, an output directory, a sweep."""

    kind: str
    folder: Path
    runs: tuple[Path, ...]
    overrides: Mapping[str, Sequence[str]] = attrs.field(factory=dict)
    sweep: Mapping[str, Any] | None = None


def find_runs(folder: Path | str) -> PageTarget:
    """What ``folder`` is: a run directory (``run.json``), a sweep's folder
    (``sweep.json``: its members' runs) or an output directory (its run directories,
    its sweeps' folders left out). Raises ``FileNotFoundError`` naming it otherwise."""
    folder = Path(folder).absolute()
    if (folder / RUN_FILE).is_file():
        return PageTarget("run", folder, (folder,))
    if (folder / SWEEP_FILE).is_file():
        try:
            sweep = json.loads((folder / SWEEP_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"cannot read {folder / SWEEP_FILE}: {exc}") from exc
        runs = []
        overrides: dict[str, Sequence[str]] = {}
        for member in sweep.get("members", []) if isinstance(sweep, dict) else []:
            run_dir = member.get("run_dir") if isinstance(member, dict) else None
            if isinstance(run_dir, str) and (Path(run_dir) / RUN_FILE).is_file():
                runs.append(Path(run_dir))
                overrides[str(Path(run_dir))] = [str(o) for o in member.get("overrides", [])]
        return PageTarget("sweep", folder, tuple(runs), overrides, sweep)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a directory")
    runs = sorted(
        child
        for child in folder.iterdir()
        if not child.name.startswith(".")
        and child.name != SWEEPS_DIR
        and (child / RUN_FILE).is_file()
    )
    if not runs:
        raise FileNotFoundError(
            f"{folder} holds no {RUN_FILE}, no {SWEEP_FILE} and no run directories; expected "
            "a run directory, an output directory or a sweep's folder"
        )
    return PageTarget("runs", folder, tuple(runs))


def _bundle_overrides(root: Path) -> list[str]:
    try:
        bundle = json.loads((root / REPORTS_DIR / BUNDLE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    found = bundle.get("overrides") if isinstance(bundle, dict) else None
    return [str(item) for item in found] if isinstance(found, list) else []


def _run_series(root: Path) -> dict[str, tuple[list[float], list[float]]]:
    """Rank 0's metrics as the run's results (a step a later attempt redid is the later
    attempt's), per name: steps and values."""
    from orchestrator_fsm.layout import metrics_file
    from orchestrator_fsm.lifecycle.metrics import METRICS_KIND, line_values

    series: dict[str, tuple[list[float], list[float]]] = {}
    for index, line in enumerate(effective_lines(read_lines(metrics_file(root, 0)))):
        if line.get("kind") != METRICS_KIND:
            continue
        step = line.get("step")
        x = float(step) if isinstance(step, int) and not isinstance(step, bool) else float(index)
        for name, value in line_values(line).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            xs, ys = series.setdefault(name, ([], []))
            xs.append(x)
            ys.append(float(value))
    return series


def comparison_context(
    target: PageTarget, diff: Mapping[str, Any] | None, page_dir: Path
) -> dict[str, Any]:
    """The values the comparison template shows."""
    records = []
    for root in target.runs:
        try:
            records.append(read_run(root, journal=False))
        except (OSError, ValueError):
            continue
    records.sort(
        key=lambda r: (
            r.sweep_member or 0,
            r.started_at or datetime.min.replace(tzinfo=timezone.utc),
        )
    )
    names = sorted({n for r in records for n in (*r.summary, *r.metrics)})
    rows = []
    per_metric: dict[str, list[PlotSeries]] = {}
    for index, record in enumerate(records):
        color = PALETTE[index % len(PALETTE)]
        label = f"#{index + 1} {record.run_id}"
        overrides = target.overrides.get(str(record.root)) or _bundle_overrides(record.root)
        values = {n: m.last for n, m in record.metrics.items()}
        values.update(record.summary)
        page = record.root / PAGE_FILE
        rows.append(
            {
                "number": index + 1,
                "color": color,
                "run_id": record.run_id,
                "link": os.path.relpath(page if page.is_file() else record.root, page_dir),
                "status": record.effective_status,
                "status_class": _status_class(record.effective_status),
                "duration": _seconds(record.duration_s),
                "started": _when(record.started_at),
                "overrides": overrides,
                "values": {n: f"{values[n]:.6g}" if n in values else "-" for n in names},
            }
        )
        for name, (xs, ys) in _run_series(record.root).items():
            per_metric.setdefault(name, []).append(
                PlotSeries(label=label, color=color, dash="", xs=xs, ys=ys, rank=index)
            )
    plots = [
        {
            "name": name,
            "svg": line_plot_svg(series, title=name, plot_id=f"plot-{name}"),
            "legend": [(s.label, s.color, s.dash) for s in series],
        }
        for name, series in sorted(per_metric.items())
    ]
    side = None
    if diff is not None and len(records) == 2:
        side = {
            "a": rows[0],
            "b": rows[1],
            "differences": [
                (item.get("kind"), item.get("key"), _shown(item.get("before")),
                 _shown(item.get("after")))
                for item in diff.get("differences", [])
            ] + [("final", name, _shown(a), _shown(b))
                 for name, (a, b) in diff.get("final", {}).items()],
            "headline": diff.get("metrics", {}).get("headline", "-"),
        }  # fmt: skip
    kind = {"sweep": "sweep", "runs": "runs of"}[target.kind]
    sweep = target.sweep or {}
    return {
        "title": f"{kind} {target.folder.name}",
        "kind": target.kind,
        "sweep": {k: _shown(v) for k, v in sweep.items() if k != "members"},
        "rows": rows,
        "names": names,
        "plots": plots,
        "side": side,
        "generated": _when(datetime.now(timezone.utc)),
        "version": __version__,
    }


def render_comparison_page(
    target: PageTarget, diff: Mapping[str, Any] | None = None, page_dir: Path | None = None
) -> str:
    """The page comparing ``target``'s runs: a table, overlaid metric plots, and for
    two runs ``diff`` (``orchestrator-fsm diff``'s result) side by side."""
    context = comparison_context(target, diff, page_dir or target.folder)
    return str(_environment().get_template("compare.html.j2").render(**context))


def write_pages(
    target: PageTarget, output: Path | None = None, diff: Mapping[str, Any] | None = None
) -> list[Path]:
    """Write ``target``'s page (``output``, default ``PAGE_FILE`` in its folder) and,
    for several runs, each run's own page first (so the table links to them); the
    paths written, the main page last."""
    written = []
    if target.kind != "run":
        for root in target.runs:
            page = root / PAGE_FILE
            atomic_write_text(page, render_run_page(root), fsync=False)
            written.append(page)
    page = output or target.folder / PAGE_FILE
    page_dir = page.parent.absolute()
    if target.kind == "run":
        text = render_run_page(target.folder, page_dir)
    else:
        text = render_comparison_page(target, diff, page_dir)
    atomic_write_text(page, text)
    written.append(page)
    return written
