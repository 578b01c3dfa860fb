"""Typed pipeline sections: attribute access, missing keys, a pipeline's declared schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest
from conftest import cli, write_recipe

from orchestrator_fsm import Config, ConfigError, MissingKeyError, pipeline_schema
from orchestrator_fsm.demo import demo_recipe
from orchestrator_fsm.demo.schema import DEMO_SCHEMA

ENTRY = """
import attrs
from orchestrator_fsm import pipeline_schema


@attrs.frozen
class Training:
    epochs: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    learning_rate: float = 0.01


@pipeline_schema(training=Training)
def train(orch):
    training = orch.cfg.training
    orch.log_summary({"epochs": training.epochs, "learning_rate": training.learning_rate})
"""


@attrs.frozen
class Training:
    epochs: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    learning_rate: float = 0.01
    layers: list[int] = attrs.Factory(lambda: [16])
    name: str = "sgd"
    shuffle: bool = True


def test_pipeline_sections_are_attributes_as_well_as_items(tmp_path: Path) -> None:
    cfg = Config.from_recipe(write_recipe(tmp_path, training={"lr": 0.1, "sizes": [1, 2]}))

    assert cfg.training.lr == cfg.training["lr"] == 0.1
    assert cfg.dataset.name == cfg.dataset["name"] == "toy_digits"
    # Copies, as for items: the config never changes.
    cfg.training.sizes.append(3)
    assert cfg.training.sizes == [1, 2]


def test_a_missing_key_names_its_dotted_path_and_the_file(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, training={"momentum_": 0.9})
    cfg = Config.from_recipe(path)

    with pytest.raises(AttributeError) as by_attribute:
        _ = cfg.training.momentum
    with pytest.raises(KeyError) as by_item:
        _ = cfg.training["momentum"]
    for caught in (by_attribute, by_item):
        assert isinstance(caught.value, MissingKeyError)
        assert str(caught.value) == (
            f"training.momentum is not in {path}; did you mean 'momentum_'?"
        )
    # Still a mapping: defaults and membership work as for any other.
    assert cfg.training.get("momentum", 0.5) == 0.5
    assert getattr(cfg.training, "momentum", None) is None
    assert "momentum" not in cfg.training


def test_a_schema_types_and_defaults_the_section_without_changing_the_config(
    tmp_path: Path,
) -> None:
    plain = Config.from_recipe(write_recipe(tmp_path, training={"epochs": 5}))
    typed = plain.with_schema({"training": Training})

    assert typed.training.typed == Training(epochs=5)
    assert (typed.training.epochs, typed.training.learning_rate) == (5, 0.01)
    assert typed.training.seed == 1234  # the orchestrator's key needs no field
    assert dict(typed.training) == {"seed": 1234, "epochs": 5}
    assert typed.config_hash() == plain.config_hash()
    assert typed.dump_serialized() == plain.dump_serialized()


def test_a_schema_rejects_typos_with_a_suggestion(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, training={"learning_rte": 0.1, "epoch": 2})

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path, schema={"training": Training})

    problems = dict(caught.value.problems)
    assert set(problems) == {"training.learning_rte", "training.epoch"}
    assert "did you mean 'learning_rate'?" in problems["training.learning_rte"]
    assert "did you mean 'epochs'?" in problems["training.epoch"]
    assert caught.value.source == str(path)
    assert f"training.epoch in {path}: unknown key 'epoch'" in str(caught.value)


@pytest.mark.parametrize(
    ("values", "path", "message"),
    [
        ({"epochs": "three"}, "training.epochs", "expected an integer, got 'three'"),
        ({"epochs": 2.5}, "training.epochs", "expected an integer, got 2.5"),
        ({"epochs": True}, "training.epochs", "expected an integer, got True"),
        ({"epochs": 0}, "training.epochs", "'epochs' must be >= 1: 0"),
        ({"learning_rate": float("inf")}, "training.learning_rate", "expected a finite number"),
        ({"layers": [1, "x"]}, "training.layers[1]", "expected an integer, got 'x'"),
        ({"name": 3}, "training.name", "expected a string, got 3"),
        ({"shuffle": "yes"}, "training.shuffle", "expected true or false, got 'yes'"),
    ],
)
def test_a_schema_checks_each_value_at_its_path(
    tmp_path: Path, values: dict[str, object], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(write_recipe(tmp_path, training=values), schema={"training": Training})

    [(where, what)] = caught.value.problems
    assert where == path
    assert what.startswith(message)


def test_a_schema_requires_its_fields_without_defaults(tmp_path: Path) -> None:
    @attrs.frozen
    class Needs:
        momentum: float

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(write_recipe(tmp_path), schema={"training": Needs})

    assert caught.value.problems == [
        ("training.momentum", "expected a number, got nothing (it is missing)")
    ]


def test_an_overridden_value_is_blamed_on_the_override_not_the_file(tmp_path: Path) -> None:
    path = write_recipe(tmp_path)

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path, ["training.epochs=0"], schema={"training": Training})

    assert caught.value.overridden == {"training.epochs"}
    assert str(caught.value) == (
        "training.epochs: 'epochs' must be >= 1: 0 (set by override 'training.epochs=0')"
    )


def test_a_schema_names_known_sections_and_attrs_classes() -> None:
    with pytest.raises(ValueError, match="'optimizer'"):
        pipeline_schema(optimizer=Training)
    with pytest.raises(TypeError, match="attrs class"):
        pipeline_schema(training=dict)


def test_the_demo_declares_its_schema(tmp_path: Path) -> None:
    from orchestrator_fsm.demo.pipeline import train

    assert train.__pipeline_schema__ == DEMO_SCHEMA  # type: ignore[attr-defined]
    with demo_recipe() as path:
        cfg = Config.from_recipe(path, schema=DEMO_SCHEMA)
    assert cfg.training.epochs == 3 and cfg.dataset.image_size == 16


@pytest.mark.slow
def test_validate_checks_the_demo_schema_before_any_run_dir(tmp_path: Path) -> None:
    with demo_recipe() as path:
        done = cli(
            "validate",
            str(path),
            "--entry",
            "orchestrator_fsm.demo.pipeline:train",
            "training.epochs=0",
            f"telemetry.output_dir={tmp_path / 'outputs'}",
            cwd=tmp_path,
        )

    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: invalid config in the command line (1 problem):" in done.stderr
    assert (
        "command line: training.epochs: expected an integer of at least 1, got 0 "
        "(set by override 'training.epochs=0')" in done.stderr
    )
    assert str(path) not in done.stderr
    assert not (tmp_path / "outputs").exists()


def test_validate_and_run_apply_the_same_schema(tmp_path: Path) -> None:
    (tmp_path / "entry.py").write_text(ENTRY, encoding="utf-8")
    recipe = write_recipe(tmp_path, training={"learning_rte": 0.1})
    spec = f"{tmp_path / 'entry.py'}:train"

    checked = cli("validate", str(recipe), "--entry", spec, cwd=tmp_path)
    ran = cli("run", str(recipe), "--entry", spec, cwd=tmp_path)

    for done in (checked, ran):
        assert done.returncode == 2, done.stdout + done.stderr
        assert (
            f"{recipe}: training.learning_rte: unknown key 'learning_rte'; "
            "did you mean 'learning_rate'?" in done.stderr
        )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_run_gives_the_pipeline_its_typed_values(tmp_path: Path) -> None:
    (tmp_path / "entry.py").write_text(ENTRY, encoding="utf-8")
    recipe = write_recipe(tmp_path)

    done = cli("run", str(recipe), "--entry", f"{tmp_path / 'entry.py'}:train", cwd=tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "summary: epochs=3, learning_rate=0.01" in done.stdout


def test_validate_without_entry_checks_the_default_pipeline_as_run_does(
    tmp_path: Path,
) -> None:
    with demo_recipe() as path:
        valid = cli("validate", str(path), cwd=tmp_path)
        invalid = cli("validate", str(path), "training.epochs=0", cwd=tmp_path)
    typo = cli("validate", str(write_recipe(tmp_path, training={"epoch": 2})), cwd=tmp_path)

    assert valid.returncode == 0, valid.stderr
    assert "orchestrator_fsm.demo.pipeline:train (the default --entry)" in valid.stdout
    assert invalid.returncode == 2
    assert "command line: training.epochs: expected an integer of at least 1" in invalid.stderr
    assert typo.returncode == 2
    assert "training.epoch: unknown key 'epoch'; did you mean 'epochs'?" in typo.stderr
    assert "give --entry for your pipeline" in typo.stderr
    assert not (tmp_path / "outputs").exists()


def test_the_readme_schema_example_runs_as_written() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    (example,) = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        if "pipeline_schema(" in block
    ]
    done = subprocess.run(
        [sys.executable, "-c", example],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "2 Training(epochs=2, batch_size=32, learning_rate=0.01)"
    assert lines[1].startswith("training.epoch: unknown key 'epoch'; did you mean 'epochs'?")
