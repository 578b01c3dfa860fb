"""Files and words as users expect them: the umask decides every mode, a diagram's
format follows its file name, the SVG's labels stay apart, the report says what was
applied, counts have their plural. The commands are the real console script."""

from __future__ import annotations

import html
import itertools
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import minimal_recipe

from orchestrator_fsm._fs import atomic_write_bytes, atomic_write_json, new_file_mode

# Its module-scoped demo run is costly: one xdist worker runs the whole module so the
# demo runs once, not once per worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("test_files_as_users_expect")

COMMAND = str(Path(sys.executable).parent / "orchestrator-fsm")


def command(
    cwd: Path, *argv: str, umask: int = 0o022, check: int | None = 0
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, XDG_CACHE_HOME=str(cwd / "cache"))
    result = subprocess.run(
        [COMMAND, *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(umask),
    )
    if check is not None:
        assert result.returncode == check, result.stderr
    return result


def modes(root: Path) -> dict[str, int]:
    return {
        str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path: Path, umask: int) -> None:
    previous = os.umask(umask)
    try:
        assert new_file_mode() == 0o666 & ~umask
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        atomic_write_json(tmp_path / "b.json", {"a": 1})
        atomic_write_bytes(tmp_path / "a.bin", b"replaced")  # a replacement too
        with open(tmp_path / "plain.txt", "w") as handle:  # what open() gives
            handle.write("x")
    finally:
        os.umask(previous)
    assert modes(tmp_path) == {name: 0o666 & ~umask for name in ("a.bin", "b.json", "plain.txt")}


@pytest.fixture(scope="module")
def demo_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One run of the bundled demo (one epoch, one loader worker) under umask 027."""
    cwd = tmp_path_factory.mktemp("demo")
    result = command(
        cwd, "run", "--set", "training.epochs=1", "--set", "hardware.num_workers=1", umask=0o027
    )
    (run,) = (cwd / "outputs").iterdir()
    return run, result


@pytest.mark.slow
def test_every_file_of_the_demo_run_follows_the_umask(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    found = modes(demo_run[0])
    assert {"run.json", "lifecycle.jsonl", "reports/config.yaml", "reports/environment.json",
            "reports/requirements.txt", "checkpoints/last.pt", "logs/run.log",
            "metrics.jsonl"} <= set(found)  # fmt: skip
    assert {name: mode for name, mode in found.items() if mode != 0o640} == {}


def test_the_report_says_what_was_applied_not_a_contradiction(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    run, result = demo_run
    report = json.loads((run / "reports" / "environment.json").read_text(encoding="utf-8"))
    determinism = report["determinism"]
    # Seeding made cuDNN deterministic; the recipe asked for no strict mode. Both are
    # said, each for what it is, and no bare `reproducible: false` stands beside them.
    assert determinism["torch"]["cudnn_deterministic"] is True
    assert determinism["torch"]["deterministic_algorithms"] is False
    assert determinism["mode"] == "cudnn-deterministic"
    assert determinism["requested"] == {"reproducible": False, "warn_only": False}
    assert "reproducible" not in determinism
    assert "determinism seeded, cuDNN deterministic (other algorithms may not be)" in result.stderr
    assert "reproducible False" not in result.stderr


def test_counts_have_the_right_plural(
    demo_run: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    log = (demo_run[0] / "logs" / "run.log").read_text(encoding="utf-8")
    assert "; 1 epoch on cpu with 1 loader worker" in log
    assert "1 thread, 1 data worker" in log
    assert "1 epochs" not in log and "1 loader workers" not in log and "1 threads" not in log
    recipe = demo_run[0] / "reports" / "config.yaml"
    shown = command(demo_run[0], "validate", str(recipe), "--set", "hardware.num_workers=1")
    assert "(1 loader worker)" in shown.stdout
    several = command(demo_run[0], "validate", str(recipe), "--set", "hardware.num_workers=3")
    assert "(3 loader workers)" in several.stdout


def test_a_permissive_umask_makes_group_writable_files(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal_recipe(tmp_path)), encoding="utf-8")
    (tmp_path / "noop.py").write_text("def main(orch):\n    pass\n", encoding="utf-8")
    command(tmp_path, "run", str(recipe), "--entry", "noop.py:main", umask=0o002)
    (run,) = (tmp_path / "outputs").iterdir()
    found = modes(run)
    assert "run.json" in found
    assert {name: mode for name, mode in found.items() if mode != 0o664} == {}


DOT = shutil.which("dot")


@pytest.mark.parametrize(
    ("name", "starts"),
    [
        ("x.mmd", "stateDiagram-v2"),
        ("x.mermaid", "stateDiagram-v2"),
        ("x.dot", "digraph lifecycle {"),
        ("x.gv", "digraph lifecycle {"),
        pytest.param("x.svg", "<?xml", marks=pytest.mark.skipif(DOT is None, reason="no Graphviz")),
        ("x", "stateDiagram-v2"),
    ],
)
def test_the_diagram_format_follows_the_output_extension(
    tmp_path: Path, name: str, starts: str
) -> None:
    result = command(tmp_path, "diagram", "--output", name, umask=0o022)
    assert (tmp_path / name).read_text(encoding="utf-8").startswith(starts)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644
    assert "diagram to" in result.stderr


def test_an_explicit_format_wins_over_the_extension(tmp_path: Path) -> None:
    command(tmp_path, "diagram", "--format", "dot", "--output", "x.mmd")
    assert (tmp_path / "x.mmd").read_text(encoding="utf-8").startswith("digraph lifecycle {")


def test_an_extension_that_names_no_format_is_a_usage_error(tmp_path: Path) -> None:
    result = command(tmp_path, "diagram", "--output", "x.png", check=2)
    assert "cannot tell the diagram format from 'x.png'" in result.stderr
    assert "--format" in result.stderr
    assert not (tmp_path / "x.png").exists()


# Helvetica's advance widths (1/1000 em, from its AFM); a character not listed counts
# as wide as a digit.
_HELVETICA = {
    **dict.fromkeys("0123456789", 556),
    **dict(zip("abcdefghijklmnopqrstuvwxyz", [556, 556, 500, 556, 556, 278, 556, 556, 222,
         222, 500, 222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500],
         strict=True)),
    **dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ", [667, 667, 722, 722, 667, 611, 778, 722, 278,
         500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611],
         strict=True)),
    " ": 278, "'": 191, "(": 333, ")": 333, ",": 278, "-": 333, ".": 278, ":": 278,
    "[": 278, "]": 278, "_": 556,
}  # fmt: skip
#: How much wider than Helvetica a viewer's fallback font may be (DejaVu Sans is ~12%).
_FALLBACK_FONT_SLACK = 1.2

_TEXT = re.compile(
    r'<text text-anchor="(\w+)" x="([-\d.]+)" y="([-\d.]+)"[^>]*font-size="([\d.]+)"[^>]*>'
    r"([^<]*)</text>"
)


def text_boxes(svg: str) -> list[tuple[float, float, float, float, str]]:
    """Every text of ``svg`` as (left, top, right, bottom, text), roughly."""
    boxes = []
    for anchor, x, y, size, raw in _TEXT.findall(svg):
        text, fs = html.unescape(raw), float(size)
        width = sum(_HELVETICA.get(c, 556) for c in text) * fs / 1000 * _FALLBACK_FONT_SLACK
        left = {"middle": float(x) - width / 2, "start": float(x), "end": float(x) - width}
        boxes.append((left[anchor], float(y) - fs, left[anchor] + width, float(y) + fs / 4, text))
    return boxes


def overlaps(svg: str) -> list[tuple[str, str]]:
    return [
        (a[4], b[4])
        for a, b in itertools.combinations(text_boxes(svg), 2)
        if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
    ]


def test_overlapping_labels_are_found() -> None:
    # The check itself: two labels drawn at one spot are caught, two far apart are not.
    text = '<text text-anchor="middle" x="{}" y="0" font-size="10.00">3 create the run</text>'
    assert overlaps(text.format(0) + text.format(30)) == [("3 create the run", "3 create the run")]
    assert overlaps(text.format(0) + text.format(200)) == []


@pytest.mark.skipif(DOT is None, reason="Graphviz 'dot' is not installed")
def test_the_svg_labels_do_not_overlap(tmp_path: Path) -> None:
    command(tmp_path, "diagram", "--output", "lifecycle.svg")
    svg = (tmp_path / "lifecycle.svg").read_text(encoding="utf-8")
    assert len(text_boxes(svg)) >= 20  # every state and edge label was read
    assert overlaps(svg) == []
