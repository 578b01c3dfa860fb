"""Recipes mean what they say: YAML 1.2's floats and no duplicate keys, wherever YAML is read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import cli, minimal_recipe, only_run_dir, write_recipe

import orchestrator_fsm.demo
from orchestrator_fsm import _yaml as yaml_rules
from orchestrator_fsm.cli import EXIT_OK, EXIT_USAGE, main
from orchestrator_fsm.config import Config
from orchestrator_fsm.config.recipe import dump_yaml, load_trusted_yaml
from orchestrator_fsm.errors import ConfigError
from orchestrator_fsm.layout import config_file
from orchestrator_fsm.phases.manifest import AuditSaver
from orchestrator_fsm.sweep import expand_sweep

DEMO_RECIPE = Path(orchestrator_fsm.demo.__file__).parent / "recipe.yaml"
DEMO_ENTRY = "orchestrator_fsm.demo.pipeline:train"

MINIMAL = """\
dataset:
  name: toy
architecture:
  name: mlp
training:
  seed: 1
"""

SCIENTIFIC = [
    ("1e-3", 1e-3),
    ("3e-4", 3e-4),
    ("1E5", 1e5),
    ("-2.5e+3", -2.5e3),
    ("1.5e3", 1.5e3),
    ("+2e0", 2.0),
    ("-.5e1", -5.0),
    ("1_000e-3", 1.0),
]


@pytest.mark.parametrize(("text", "number"), SCIENTIFIC)
def test_scientific_notation_in_a_recipe_is_a_float(
    tmp_path: Path, text: str, number: float
) -> None:
    path = write_recipe(tmp_path, MINIMAL + f"  lr: {text}\n  listed: [{text}]\n")

    cfg = Config.from_recipe(path)

    assert cfg.training["lr"] == number
    assert type(cfg.training["lr"]) is float
    assert cfg.training["listed"] == [number]


@pytest.mark.parametrize(("text", "number"), SCIENTIFIC)
def test_scientific_notation_in_an_override_is_a_float(
    tmp_path: Path, text: str, number: float
) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    cfg = Config.from_recipe(path, overrides=[f"training.lr={text}"])

    assert cfg.training["lr"] == number
    assert type(cfg.training["lr"]) is float


@pytest.mark.parametrize(
    "text", ["'1e-3'", '"3e-4"', "1e-3a", "e5", "1e", "1.2.3e4", "0x1e5", "v1e3", "12e"]
)
def test_quoted_or_non_numeric_text_stays_a_string(tmp_path: Path, text: str) -> None:
    path = write_recipe(tmp_path, MINIMAL + f"  tag: {text}\n")

    from_file = Config.from_recipe(path).training["tag"]
    from_override = Config.from_recipe(path, overrides=[f"training.tag={text}"]).training["tag"]

    expected = 0x1E5 if text == "0x1e5" else text.strip("'\"")
    assert from_file == from_override == expected


def test_integers_and_yaml_1_1_floats_read_as_before(tmp_path: Path) -> None:
    path = write_recipe(
        tmp_path, MINIMAL + "  n: [7, -3, 0x1f, 1_000, 1.0e-3, .5, 1:30.5, .inf, -.inf]\n"
    )

    assert Config.from_recipe(path).training["n"] == [
        7,
        -3,
        31,
        1000,
        0.001,
        0.5,
        90.5,
        float("inf"),
        float("-inf"),
    ]


def test_each_member_of_a_sweep_reads_its_value_as_a_float(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    rates = [
        Config.from_recipe(path, overrides=member).training["lr"]
        for member in expand_sweep(["training.lr=1e-3,3e-4"])
    ]

    assert rates == [1e-3, 3e-4]


def test_the_demo_accepts_a_learning_rate_in_scientific_notation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["validate", str(DEMO_RECIPE), "--entry", DEMO_ENTRY, "training.learning_rate=3e-4"]

    assert main(argv) == EXIT_OK, capsys.readouterr().err


def test_strings_that_look_like_numbers_are_written_quoted_and_read_back_the_same(
    tmp_path: Path,
) -> None:
    data = {"name": "1e-3", "also": "1E5", "rate": 1e-3, "tiny": 1e-30, "big": 1e300}

    assert load_trusted_yaml(dump_yaml(data).encode()) == data
    saved = AuditSaver().save_config(data, tmp_path / "config.yaml")
    assert load_trusted_yaml(saved.read_bytes()) == data
    # Any YAML reader gets the strings back as strings.
    assert yaml.safe_load(saved.read_text(encoding="utf-8"))["name"] == "1e-3"


def test_a_run_saves_a_scientific_learning_rate_as_the_float_it_read(tmp_path: Path) -> None:
    path = write_recipe(tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        path.read_text(encoding="utf-8").replace("seed: 1234", "seed: 1234\n  lr: 1e-3"),
        encoding="utf-8",
    )
    script = tmp_path / "train_lr.py"
    script.write_text(
        "def train(orch):\n"
        "    lr = orch.cfg.training['lr']\n"
        "    assert type(lr) is float, repr(lr)\n"
        "    orch.log_summary({'lr': lr})\n",
        encoding="utf-8",
    )

    done = cli("run", str(recipe), "--entry", "train_lr:train", "training.wd=5e-4", cwd=tmp_path)

    assert done.returncode == EXIT_OK, done.stderr
    run_dir = only_run_dir(tmp_path / "outputs")
    saved = load_trusted_yaml(config_file(run_dir).read_bytes())
    assert (saved["training"]["lr"], saved["training"]["wd"]) == (1e-3, 5e-4)
    assert json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def test_a_duplicate_key_is_a_config_error_naming_both_lines(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL + "  lr: 0.1\n  epochs: 3\n  lr: 0.2\n")

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path)

    assert caught.value.problems == [
        (
            "training",
            f"duplicate key 'lr' at {path}:9, first at {path}:7 "
            "(the last would silently win; keep one)",
        )
    ]
    assert str(caught.value).startswith(f"training in {path}: duplicate key 'lr'")


@pytest.mark.parametrize(
    ("extra", "where", "key", "lines"),
    [
        ("dataset:\n  name: other\n", "", "dataset", (7, 1)),
        ("runs:\n  - {a: 1, b: 2, a: 3}\n", "runs[0]", "a", (8, 8)),
        ("x:\n  y:\n    1: a\n    0x1: b\n", "x.y", 1, (10, 9)),
        ("z: {'k': 1, \"k\": 2}\n", "z", "k", (7, 7)),
    ],
)
def test_duplicates_are_found_at_any_depth_and_spelling(
    tmp_path: Path, extra: str, where: str, key: object, lines: tuple[int, int]
) -> None:
    path = write_recipe(tmp_path, MINIMAL + extra)

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path)

    [(problem_path, message)] = caught.value.problems
    assert problem_path == where
    again, first = lines
    assert message.startswith(f"duplicate key {key!r} at {path}:{again}, first at {path}:{first}")


def test_a_key_a_merge_brings_in_may_be_set_again(tmp_path: Path) -> None:
    path = write_recipe(
        tmp_path,
        MINIMAL
        + "base: &b {lr: 0.1, wd: 0}\n"
        + "x:\n  inner: &m {<<: *b, lr: 0.2}\n"
        + "y: {<<: *m, lr: 0.3}\n",
    )

    cfg = Config.from_recipe(path)

    assert cfg.pipeline["x"] == {"inner": {"lr": 0.2, "wd": 0}}
    assert cfg.pipeline["y"] == {"lr": 0.3, "wd": 0}


def test_a_duplicate_key_in_an_override_names_its_columns(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path, overrides=["training.optim={lr: 1, lr: 2}"])

    [(_, message)] = caught.value.problems
    assert message == (
        "override 'training.optim={lr: 1, lr: 2}': the value holds a duplicate key 'lr' at "
        "column 9, first at column 2 (the last would silently win; keep one)"
    )


def test_validate_refuses_a_duplicate_key_naming_both_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = write_recipe(tmp_path, minimal_recipe(tmp_path))
    recipe.write_text(
        recipe.read_text(encoding="utf-8") + "training:\n  seed: 2\n", encoding="utf-8"
    )
    lines = recipe.read_text(encoding="utf-8").splitlines()
    first = lines.index("training:") + 1

    assert main(["validate", str(recipe)]) == EXIT_USAGE

    err = capsys.readouterr().err
    assert f"duplicate key 'training' at {recipe}:{len(lines) - 1}, first at {recipe}:{first}" in (
        " ".join(err.split())
    )


def test_the_trusted_reader_refuses_duplicates_too() -> None:
    with pytest.raises(yaml_rules.DuplicateKey):
        load_trusted_yaml(b"a: 1\na: 2\n")


def test_the_loader_keeps_libyamls_parser_where_pyyaml_has_it() -> None:
    if yaml.__with_libyaml__:
        assert issubclass(yaml_rules.Loader, yaml.CSafeLoader)
        assert issubclass(yaml_rules.FastDumper, yaml.CSafeDumper)
    assert yaml.load("lr: 1e-3", Loader=yaml_rules.Loader) == {"lr": 0.001}
