"""``orchestrator-fsm diff RUN_A RUN_B``: what differs between two runs, from their
rerun bundles and their metrics.

Sections: config (dotted keys of the saved resolved configs), overrides, seeds,
packages, git, entry, recipe, python, torch, hardware, env, libraries, and the metrics:
the final values of each (``run.json``'s last metrics and summary, durations left
out as in :mod:`~orchestrator_fsm.reproduce.compare`) and the first
divergence of B's metrics stream from A's.

Exit codes, as ``diff(1)``'s: 0 when the runs do not differ (no difference that changes
what runs, metrics identical or within ``--rtol``/``--atol``; notes such as the
recipe's path or the native libraries loaded do not count), 1 when they differ, 2 for
a usage error (a directory without a rerun bundle).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from orchestrator_fsm.cli._shared import EXIT_OK, EXIT_USAGE, say

#: What ``diff`` exits with when the runs differ (as ``diff(1)`` does).
EXIT_DIFFERENT: Final = 1

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXIT_DIFFERENT", "cmd_diff", "diff_runs"]


def _final_values(run_dir: Path) -> dict[str, float]:
    import fnmatch

    from orchestrator_fsm.lifecycle.record import read_run
    from orchestrator_fsm.reproduce.compare import DEFAULT_IGNORED

    try:
        record = read_run(run_dir)
    except (OSError, ValueError):
        return {}
    values = {name: metric.last for name, metric in record.metrics.items()}
    values.update(record.summary)
    # Durations never repeat; as in the metrics comparison, they are left out.
    return {
        name: value
        for name, value in values.items()
        if not any(fnmatch.fnmatchcase(name, pattern) for pattern in DEFAULT_IGNORED)
    }


def diff_runs(run_a: Path, run_b: Path, *, rtol: float = 0.0, atol: float = 0.0) -> dict[str, Any]:
    """Every difference between the runs in ``run_a`` and ``run_b`` as plain data:
    ``differences`` (one per drift item), ``final`` (metrics whose final values
    differ: ``{name: [a, b]}``), ``metrics`` (the verdict of B against A) and
    ``differ`` (whether a difference is not a note or the metrics diverged).
    Raises ``BundleError`` for a directory without a bundle."""
    from orchestrator_fsm.layout import config_file
    from orchestrator_fsm.lifecycle.metrics import same_value
    from orchestrator_fsm.reproduce.bundle import read_bundle
    from orchestrator_fsm.reproduce.compare import DIVERGED, compare_runs
    from orchestrator_fsm.reproduce.drift import bundle_drift, is_drift

    bundle_a, bundle_b = read_bundle(run_a), read_bundle(run_b)
    configs = []
    for run in (run_a, run_b):
        import yaml

        from orchestrator_fsm.config.recipe import load_trusted_yaml

        try:
            configs.append(load_trusted_yaml(config_file(run).read_bytes()))
        except (OSError, yaml.YAMLError):
            configs.append(None)
    items = bundle_drift(bundle_a, bundle_b, config_before=configs[0], config_after=configs[1])
    final_a, final_b = _final_values(run_a), _final_values(run_b)
    final = {
        name: [_json_value(final_a.get(name)), _json_value(final_b.get(name))]
        for name in sorted(final_a.keys() | final_b.keys())
        if not same_value(final_a.get(name), final_b.get(name))
    }
    verdict = compare_runs(run_a, run_b, rtol=rtol, atol=atol)
    return {
        "run_a": str(run_a),
        "run_b": str(run_b),
        "differences": [dict(item.to_json(), note=not is_drift(item)) for item in items],
        "final": final,
        "metrics": verdict.to_json(),
        "differ": any(is_drift(item) for item in items) or verdict.status == DIVERGED,
    }


def _json_value(value: object) -> object:
    from orchestrator_fsm.lifecycle.metrics import json_number

    return json_number(value) if isinstance(value, float) else value


def _shown(value: object, width: int = 48) -> str:
    text = "-" if value is None else str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _table_lines(result: dict[str, Any]) -> list[str]:
    rows = [
        (item["kind"], item["key"], _shown(item["before"]), _shown(item["after"]))
        for item in result["differences"]
    ]
    rows += [("final", name, _shown(a), _shown(b)) for name, (a, b) in result["final"].items()]
    header = ("section", "key", "A", "B")
    if not rows:
        return []
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


def cmd_diff(args: argparse.Namespace, out: Console, err: Console) -> int:
    """Print what differs between ``args.run_a`` and ``args.run_b``; 0 when they do not
    differ, :data:`EXIT_DIFFERENT` when they do, 2 for a directory without a bundle."""
    from orchestrator_fsm.reproduce.bundle import BundleError

    try:
        result = diff_runs(
            Path(args.run_a).resolve(), Path(args.run_b).resolve(), rtol=args.rtol, atol=args.atol
        )
    except BundleError as exc:
        say(err, f"error: {exc}", "red")
        return EXIT_USAGE
    exit_code = EXIT_DIFFERENT if result["differ"] else EXIT_OK
    if args.json:
        out.file.write(json.dumps(result, indent=2, sort_keys=True, default=str) + "\n")
        return exit_code
    say(out, f"A: {result['run_a']}")
    say(out, f"B: {result['run_b']}")
    lines = _table_lines(result)
    if lines:
        for line in lines:
            say(out, line)
    else:
        say(out, "no differences in config, overrides, seeds, packages, git, entry, environment")
    say(out, f"metrics: {result['metrics']['headline']}")
    return exit_code
