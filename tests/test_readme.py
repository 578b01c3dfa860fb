"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)


def test_readme_quickstart_runs_and_ends_cleaned(tmp_path: Path) -> None:
    quickstart, step_by_step = python_blocks()[:2]
    shutil.copytree(ROOT / "examples" / "recipes", tmp_path / "examples" / "recipes")
    script = tmp_path / "quickstart.py"
    script.write_text(quickstart + step_by_step, encoding="utf-8")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    assert lines[0] == "cleaned"
    assert lines[1:] == [
        "seeded",
        "configured",
        "provisioned",
        "logged",
        "persisted",
        "guarded",
        "ready",
        "reported",
        "cleaned",
    ]
    runs = sorted((tmp_path / "outputs").iterdir())
    assert len(runs) == 2
    for run in runs:
        assert (run / "run.json").is_file()
        assert (run / "reports" / "config.yaml").is_file()
