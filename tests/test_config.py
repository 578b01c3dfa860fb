"""Config: recipes in, typed frozen config out; every problem a ConfigError naming the field."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from conftest import write_recipe

from orchestrator_fsm import _yaml as yaml_rules
from orchestrator_fsm.config import (
    ArchitectureConfig,
    Config,
    DatasetConfig,
    HardwareConfig,
    redact_secrets,
    sections,
)
from orchestrator_fsm.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES = Path(__file__).resolve().parent / "recipes"

MINIMAL = """\
dataset:
  name: digits
architecture:
  name: tiny_mlp
training:
  seed: 1
"""


def minimal(**sections: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "dataset": {"name": "digits"},
        "architecture": {"name": "tiny_mlp"},
        "training": {"seed": 1},
    }
    data.update(sections)
    return data


def config_error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(data)
    return caught.value


def problem_at(error: ConfigError, path: str) -> str:
    """The message of the problem at ``path``; fails listing all problems if there is none."""
    matches = [message for where, message in error.problems if where == path]
    assert matches, f"no problem at {path!r}; problems: {error.problems}"
    return matches[0]


def recipe_error(
    tmp_path: Path, text: str | bytes, overrides: list[Any] | None = None
) -> ConfigError:
    path = write_recipe(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path, overrides=overrides or [])
    return caught.value


def test_reference_shaped_recipe_loads_unchanged() -> None:
    path = RECIPES / "orchard_like_mini_cnn.yaml"
    raw = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_rules.Loader)

    cfg = Config.from_recipe(path)

    assert cfg.dataset.name == "bloodmnist"
    assert cfg.architecture.name == "mini_cnn"
    assert cfg.training.seed == 42
    assert cfg.hardware.device == "auto"
    assert cfg.hardware.reproducible is True
    assert cfg.telemetry.output_dir == Path("outputs")
    assert cfg.telemetry.log_interval == 50
    pipeline_keys = [key for key in raw if key not in ("hardware", "telemetry")]
    assert cfg.pipeline == {key: raw[key] for key in pipeline_keys}
    # YAML 1.2 and Hydra read 5e-4 (no dot) as a number, as its writer meant.
    assert cfg.training["weight_decay"] == 5e-4
    assert cfg.pipeline["evaluation"]["fig_size_predictions"] == [12, 8]


def test_reference_optuna_recipe_keeps_nested_sections_and_scalars_verbatim() -> None:
    path = RECIPES / "orchard_like_optuna.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))

    cfg = Config.from_recipe(path)

    assert cfg.pipeline["task_type"] == "classification"
    assert cfg.pipeline["optuna"] == raw["optuna"]
    assert cfg.pipeline["optuna"]["search_space_overrides"]["learning_rate"]["log"] is True
    assert cfg.hardware.project_name == "orchard_ml"
    assert cfg.hardware.allow_process_kill is True
    assert cfg.hardware.deterministic_warn_only is False


@pytest.mark.parametrize(
    "recipe",
    [
        REPO_ROOT / "orchestrator_fsm" / "demo" / "recipe.yaml",
        REPO_ROOT / "examples" / "recipes" / "mini_cnn.yaml",
        REPO_ROOT / "examples" / "recipes" / "reproducible.yaml",
    ],
    ids=lambda path: path.name,
)
def test_bundled_demo_and_example_recipes_load(recipe: Path) -> None:
    cfg = Config.from_recipe(recipe)

    assert cfg.dataset.name == "synthetic_shapes"
    assert cfg.architecture.name == "mini_cnn"
    assert cfg.training["epochs"] >= 1


def test_demo_recipe_trains_on_the_cpu_with_seed_42() -> None:
    cfg = Config.from_recipe(REPO_ROOT / "orchestrator_fsm" / "demo" / "recipe.yaml")

    assert cfg.training.seed == 42
    assert cfg.hardware.device == "cpu"
    assert cfg.telemetry.output_dir == Path("outputs")
    assert {"epochs", "batch_size", "learning_rate"} <= set(cfg.training)


def test_reproducible_example_turns_on_deterministic_mode() -> None:
    cfg = Config.from_recipe(REPO_ROOT / "examples" / "recipes" / "reproducible.yaml")

    assert cfg.hardware.use_deterministic_algorithms is True
    assert cfg.hardware.effective_num_workers == 0


def test_owned_sections_take_defaults_when_absent() -> None:
    cfg = Config.from_dict(minimal())

    assert cfg.hardware == HardwareConfig()
    assert cfg.hardware.device == "auto"
    assert cfg.hardware.project_name == "orchestrator-fsm"
    assert cfg.telemetry.output_dir == Path("outputs")
    assert cfg.telemetry.log_level == "INFO"
    assert cfg.telemetry.log_interval == 10
    assert cfg.infrastructure.lock.enabled is True
    assert cfg.infrastructure.lock.timeout_s == 0.0
    assert cfg.infrastructure.lock.path is None


def test_an_empty_owned_section_means_its_defaults(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL + "hardware:\ntelemetry:\ninfrastructure:\n  lock:\n")

    cfg = Config.from_recipe(path)

    assert cfg == Config.from_dict(minimal())


def test_pipeline_section_reads_like_a_read_only_mapping() -> None:
    cfg = Config.from_dict(minimal(training={"seed": 3, "schedule": {"milestones": [10, 20]}}))

    assert cfg.training["schedule"] == {"milestones": [10, 20]}
    assert cfg.training.get("epochs", 5) == 5
    assert "schedule" in cfg.training
    assert dict(cfg.training) == {"seed": 3, "schedule": {"milestones": [10, 20]}}
    assert cfg.training.params == {"seed": 3, "schedule": {"milestones": [10, 20]}}
    with pytest.raises(KeyError):
        cfg.training["epochs"]

    cfg.training["schedule"]["milestones"].append(30)
    cfg.training.params["seed"] = 99
    cfg.pipeline["training"]["seed"] = 99

    assert cfg.training["schedule"] == {"milestones": [10, 20]}
    assert cfg.training.seed == 3


def test_pipeline_holds_every_top_level_key_the_orchestrator_does_not_own() -> None:
    cfg = Config.from_dict(
        minimal(task_type="detection", augmentation={"hflip": 0.5}, hardware={"device": "cpu"})
    )

    assert cfg.pipeline == {
        "dataset": {"name": "digits"},
        "architecture": {"name": "tiny_mlp"},
        "training": {"seed": 1},
        "task_type": "detection",
        "augmentation": {"hflip": 0.5},
    }


def test_sections_of_different_kinds_with_equal_content_are_not_equal() -> None:
    assert DatasetConfig({"name": "x"}) != ArchitectureConfig({"name": "x"})
    assert DatasetConfig({"name": "x"}) == DatasetConfig({"name": "x"})


def test_source_is_the_absolute_recipe_path_and_is_not_compared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_recipe(tmp_path, MINIMAL)
    monkeypatch.chdir(tmp_path)

    cfg = Config.from_recipe("recipe.yaml")

    assert cfg.source == tmp_path / "recipe.yaml"
    assert cfg.source.is_absolute()
    assert Config.from_dict(minimal()).source is None
    assert cfg == Config.from_dict(minimal())


def test_from_dict_does_not_modify_its_input() -> None:
    data = minimal(hardware={"device": "CPU"}, telemetry={"output_dir": Path("out")})
    snapshot = json.dumps(data, default=str)

    Config.from_dict(data)

    assert json.dumps(data, default=str) == snapshot
    assert data["telemetry"]["output_dir"] == Path("out")


def test_dates_in_pipeline_data_are_kept_as_iso_text(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL + "notes:\n  frozen_on: 2024-05-01\n")

    cfg = Config.from_recipe(path)

    assert cfg.pipeline["notes"] == {"frozen_on": "2024-05-01"}


def test_yaml_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, b"\xef\xbb\xbf" + MINIMAL.encode())

    assert Config.from_recipe(path).dataset.name == "digits"


@pytest.mark.parametrize("seed", [-1, 2**32, True, "42", 4.0, None, [1]])
def test_seed_must_be_an_integer_in_range(seed: Any) -> None:
    error = config_error(minimal(training={"seed": seed}))

    assert problem_at(error, "training.seed").startswith("expected an integer in [0, 2**32)")


@pytest.mark.parametrize("seed", [0, 2**32 - 1])
def test_seed_range_includes_its_bounds(seed: int) -> None:
    assert Config.from_dict(minimal(training={"seed": seed})).training.seed == seed


def test_seed_error_says_where_what_was_expected_and_what_was_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_recipe(tmp_path, MINIMAL.replace("seed: 1", "seed: -1"))
    monkeypatch.chdir(tmp_path)

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe("recipe.yaml")

    error = caught.value
    assert str(error) == "training.seed in recipe.yaml: expected an integer in [0, 2**32), got -1"
    assert error.problems == [("training.seed", "expected an integer in [0, 2**32), got -1")]
    assert error.source == "recipe.yaml"


def test_missing_seed_is_reported_as_missing() -> None:
    error = config_error(minimal(training={"epochs": 3}))

    assert "got nothing (it is missing)" in problem_at(error, "training.seed")


@pytest.mark.parametrize("section", ["dataset", "architecture"])
@pytest.mark.parametrize("name", ["", "   ", 5, None, ["a"]])
def test_dataset_and_architecture_names_must_be_non_empty_strings(section: str, name: Any) -> None:
    error = config_error(minimal(**{section: {"name": name}}))

    assert problem_at(error, f"{section}.name").startswith("expected a non-empty string")


@pytest.mark.parametrize("section", ["dataset", "architecture", "training"])
def test_missing_pipeline_section_is_reported(section: str) -> None:
    data = minimal()
    del data[section]

    error = config_error(data)

    assert "got nothing (it is missing)" in problem_at(error, section)


def test_pipeline_section_that_is_not_a_mapping_is_reported() -> None:
    error = config_error(minimal(dataset="mnist"))

    assert problem_at(error, "dataset") == (
        "expected a mapping with a non-empty string 'name', got 'mnist'"
    )


@pytest.mark.parametrize(
    ("section", "typo", "meant"),
    [
        ("hardware", "devcie", "device"),
        ("hardware", "reproducable", "reproducible"),
        ("telemetry", "log_levl", "log_level"),
        ("infrastructure", "lok", "lock"),
        ("infrastructure.lock", "timeout", "timeout_s"),
    ],
)
def test_unknown_owned_key_names_the_key_the_file_and_the_closest_valid_key(
    tmp_path: Path, section: str, typo: str, meant: str
) -> None:
    data = minimal()
    node = data
    for key in section.split("."):
        node = node.setdefault(key, {})
    node[typo] = 1
    path = write_recipe(tmp_path, yaml.safe_dump(data), name="typo.yaml")

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path)

    message = problem_at(caught.value, f"{section}.{typo}")
    assert f"unknown key {typo!r}; did you mean {meant!r}?" in message
    assert f"{section}.{typo} in {path}:" in str(caught.value)


def test_unknown_key_without_a_close_match_lists_the_valid_keys() -> None:
    error = config_error(minimal(telemetry={"zzz": 1}))

    message = problem_at(error, "telemetry.zzz")
    assert "did you mean" not in message
    assert "valid keys: output_dir, log_level, log_interval" in message


def test_owned_section_that_is_not_a_mapping_is_reported() -> None:
    error = config_error(minimal(hardware="cpu"))

    assert problem_at(error, "hardware").startswith("expected a mapping of settings")


@pytest.mark.parametrize(("typo", "meant"), [("hardwre", "hardware"), ("Telemetry", "telemetry")])
def test_misspelt_owned_section_is_not_silently_taken_for_pipeline_data(
    typo: str, meant: str
) -> None:
    error = config_error(minimal(**{typo: {"reproducible": True}}))

    assert f"did you mean the section {meant!r}" in problem_at(error, typo)


def test_top_level_key_merely_related_to_an_owned_section_stays_pipeline_data() -> None:
    cfg = Config.from_dict(minimal(hardware_profiles={"a100": {"memory_gb": 80}}))

    assert cfg.pipeline["hardware_profiles"] == {"a100": {"memory_gb": 80}}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("auto", "auto"),
        ("cpu", "cpu"),
        ("cuda", "cuda"),
        ("cuda:0", "cuda:0"),
        ("cuda:12", "cuda:12"),
        ("CUDA:01", "cuda:1"),
        ("mps", "mps"),
        ("MPS", "mps"),
    ],
)
def test_valid_devices_are_accepted_and_stored_lower_case(given: str, stored: str) -> None:
    assert Config.from_dict(minimal(hardware={"device": given})).hardware.device == stored


@pytest.mark.parametrize(
    "device", ["gpu", "cuda:-1", "cuda:", "cuda:x", "cuda:1.5", "mps:0", " cpu", "", 0, None]
)
def test_unknown_devices_are_rejected(device: Any) -> None:
    error = config_error(minimal(hardware={"device": device}))

    assert problem_at(error, "hardware.device").startswith(
        "expected one of auto, cpu, cuda, cuda:N (N a non-negative integer), mps, got "
    )


def test_warn_only_requires_reproducible() -> None:
    error = config_error(minimal(hardware={"deterministic_warn_only": True}))

    message = problem_at(error, "hardware.deterministic_warn_only")
    assert "requires reproducible: true" in message


def test_warn_only_is_accepted_with_reproducible() -> None:
    cfg = Config.from_dict(
        minimal(hardware={"reproducible": True, "deterministic_warn_only": True})
    )

    assert cfg.hardware.deterministic_warn_only is True


@pytest.mark.parametrize("field", ["reproducible", "deterministic_warn_only", "allow_process_kill"])
@pytest.mark.parametrize("value", ["yes", "true", "false", 1, 0, None])
def test_hardware_flags_must_be_real_booleans(field: str, value: Any) -> None:
    hardware: dict[str, Any] = {"reproducible": True}
    hardware[field] = value

    error = config_error(minimal(hardware=hardware))

    assert problem_at(error, f"hardware.{field}") == f"expected true or false, got {value!r}"


def test_yaml_booleans_are_real_booleans(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL + "hardware:\n  reproducible: yes\n")

    assert Config.from_recipe(path).hardware.reproducible is True


@pytest.mark.parametrize(("field", "minimum"), [("num_workers", 0), ("cpu_threads", 1)])
def test_worker_and_thread_counts_have_a_minimum_or_are_automatic(field: str, minimum: int) -> None:
    assert getattr(Config.from_dict(minimal(hardware={field: minimum})).hardware, field) == minimum
    assert getattr(Config.from_dict(minimal(hardware={field: None})).hardware, field) is None
    assert getattr(Config.from_dict(minimal(hardware={field: 1024})).hardware, field) == 1024
    for bad in (minimum - 1, True, "2", 2.0, 1025, 32768, 99999999999999999999):
        error = config_error(minimal(hardware={field: bad}))
        assert problem_at(error, f"hardware.{field}") == (
            f"expected an integer from {minimum} to 1024, or null for automatic, got {bad!r}"
        )


@pytest.mark.timeout(20)
def test_an_override_path_deeper_than_a_recipe_may_be_is_a_config_error(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal()), encoding="utf-8")
    deep = ".".join(["a"] * 1000) + "=1"
    with pytest.raises(ConfigError, match="nested more than 100 levels deep"):
        Config.from_recipe(recipe, overrides=[deep])


@pytest.mark.parametrize("name", ["orchard_ml", "vision-experiment", "p1", "a" * 80])
def test_slug_project_names_are_accepted(name: str) -> None:
    assert Config.from_dict(minimal(hardware={"project_name": name})).hardware.project_name == name


@pytest.mark.parametrize("name", ["My Project", "", "../etc", "a/b", "-x", "x_", "a" * 81, 5])
def test_project_name_must_be_a_slug(name: Any) -> None:
    error = config_error(minimal(hardware={"project_name": name}))

    assert problem_at(error, "hardware.project_name").startswith("expected a slug")


def test_project_name_error_suggests_a_slug() -> None:
    error = config_error(minimal(hardware={"project_name": "My Project"}))

    assert "(such as 'my-project')" in problem_at(error, "hardware.project_name")


def test_deterministic_algorithms_follow_reproducible() -> None:
    assert Config.from_dict(minimal()).hardware.use_deterministic_algorithms is False
    strict = Config.from_dict(minimal(hardware={"reproducible": True}))
    assert strict.hardware.use_deterministic_algorithms is True


def test_reproducible_runs_keep_the_workers_the_recipe_asks_for() -> None:
    cfg = Config.from_dict(minimal(hardware={"reproducible": True, "num_workers": 3}))

    assert cfg.hardware.effective_num_workers == 3


def test_reproducible_runs_load_data_in_the_main_process_when_the_count_is_automatic(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The automatic count depends on the machine; a rerun elsewhere must not change it.
    monkeypatch.setattr(sections, "available_cpu_count", lambda: 8)
    cfg = Config.from_dict(minimal(hardware={"reproducible": True}))

    assert cfg.hardware.effective_num_workers == 0


def test_explicit_worker_count_is_used_when_not_reproducible() -> None:
    cfg = Config.from_dict(minimal(hardware={"num_workers": 3}))

    assert cfg.hardware.effective_num_workers == 3


@pytest.mark.parametrize(("cpus", "workers"), [(1, 0), (2, 1), (4, 3), (5, 4), (64, 4)])
def test_automatic_worker_count_leaves_one_cpu_and_caps_at_four(
    monkeypatch: pytest.MonkeyPatch, cpus: int, workers: int
) -> None:
    monkeypatch.setattr(sections, "available_cpu_count", lambda: cpus)

    assert Config.from_dict(minimal()).hardware.effective_num_workers == workers


@pytest.mark.parametrize(
    ("given", "stored"),
    [("debug", "DEBUG"), ("Info", "INFO"), ("WARNING", "WARNING"), ("warn", "WARN")],
)
def test_log_level_is_a_logging_level_name_stored_upper_case(given: str, stored: str) -> None:
    assert Config.from_dict(minimal(telemetry={"log_level": given})).telemetry.log_level == stored


@pytest.mark.parametrize("level", ["verbose", "", 10, None])
def test_unknown_log_levels_are_rejected(level: Any) -> None:
    error = config_error(minimal(telemetry={"log_level": level}))

    assert problem_at(error, "telemetry.log_level").startswith("expected a logging level name")


@pytest.mark.parametrize("interval", [0, -5, 1.5, True, "10"])
def test_log_interval_must_be_a_positive_integer(interval: Any) -> None:
    error = config_error(minimal(telemetry={"log_interval": interval}))

    assert problem_at(error, "telemetry.log_interval") == (
        f"expected an integer >= 1, got {interval!r}"
    )


def test_output_dir_becomes_a_path() -> None:
    cfg = Config.from_dict(minimal(telemetry={"output_dir": "runs/mnist"}))

    assert cfg.telemetry.output_dir == Path("runs/mnist")


@pytest.mark.parametrize("output_dir", ["", 5, None, ["a"], "a\x00b"])
def test_output_dir_must_be_a_non_empty_path(output_dir: Any) -> None:
    error = config_error(minimal(telemetry={"output_dir": output_dir}))

    assert problem_at(error, "telemetry.output_dir").startswith("expected a non-empty path")


@pytest.mark.parametrize(("given", "stored"), [(0, 0.0), (2.5, 2.5), (30, 30.0)])
def test_lock_timeout_is_seconds_at_least_zero(given: float, stored: float) -> None:
    cfg = Config.from_dict(minimal(infrastructure={"lock": {"timeout_s": given}}))

    assert cfg.infrastructure.lock.timeout_s == stored


@pytest.mark.parametrize("timeout", [-1, -0.5, True, "5", None])
def test_negative_or_non_numeric_lock_timeouts_are_rejected(timeout: Any) -> None:
    error = config_error(minimal(infrastructure={"lock": {"timeout_s": timeout}}))

    assert problem_at(error, "infrastructure.lock.timeout_s").startswith(
        "expected a number of seconds >= 0"
    )


def test_lock_settings_are_typed() -> None:
    cfg = Config.from_dict(
        minimal(infrastructure={"lock": {"enabled": False, "path": "/tmp/x.lock"}})
    )

    assert cfg.infrastructure.lock.enabled is False
    assert cfg.infrastructure.lock.path == Path("/tmp/x.lock")
    error = config_error(minimal(infrastructure={"lock": {"enabled": "no", "path": ""}}))
    assert problem_at(error, "infrastructure.lock.enabled") == "expected true or false, got 'no'"
    assert problem_at(error, "infrastructure.lock.path") == "expected a non-empty path, got ''"


def test_every_bad_field_is_reported_in_one_error(tmp_path: Path) -> None:
    text = """\
    dataset:
      name: ""
    architecture:
      name: mini_cnn
    training:
      seed: -1
    hardware:
      device: gpu
      devcie: cpu
      deterministic_warn_only: true
    telemetry:
      log_level: loud
    infrastructure:
      lock:
        timeout_s: -3
    """
    error = recipe_error(tmp_path, text)

    paths = [path for path, _ in error.problems]
    assert paths == [
        "dataset.name",
        "training.seed",
        "hardware.devcie",
        "hardware.device",
        "hardware.deterministic_warn_only",
        "telemetry.log_level",
        "infrastructure.lock.timeout_s",
    ]
    lines = str(error).splitlines()
    assert lines[0] == f"7 problems in {tmp_path / 'recipe.yaml'}:"
    assert len(lines) == 8
    for line, (path, message) in zip(lines[1:], error.problems, strict=True):
        assert line == f"  {path} in {tmp_path / 'recipe.yaml'}: {message}"


def test_in_memory_data_is_named_dict_in_errors() -> None:
    error = config_error(minimal(training={"seed": -1}))

    assert str(error).startswith("training.seed in <dict>: ")
    assert error.source is None


def test_from_dict_source_names_the_origin_in_errors_and_on_the_config() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict(minimal(training={"seed": -1}), source="sweep/trial-3.yaml")

    assert str(caught.value).startswith("training.seed in sweep/trial-3.yaml: ")
    assert caught.value.source == "sweep/trial-3.yaml"
    cfg = Config.from_dict(minimal(), source="sweep/trial-3.yaml")
    assert cfg.source == Path("sweep/trial-3.yaml")


def test_a_very_long_problem_list_is_cut_in_the_message_but_kept_whole() -> None:
    error = config_error(minimal(metrics={f"m{i}": float("nan") for i in range(60)}))

    assert len(error.problems) == 60
    assert str(error).splitlines()[-1] == "  ... and 10 more"


def test_from_dict_rejects_data_that_is_not_a_mapping() -> None:
    with pytest.raises(ConfigError, match=r"^<dict>: expected a mapping of recipe sections"):
        Config.from_dict([("dataset", {})])  # type: ignore[arg-type]


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(missing)

    assert str(caught.value) == f"{missing}: no such file"
    assert caught.value.source == str(missing)


def test_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        Config.from_recipe(tmp_path)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n", "---\n", "null\n"])
def test_empty_recipe_is_a_config_error(tmp_path: Path, text: str) -> None:
    assert "is empty" in str(recipe_error(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "shown"),
    [("- a\n- b\n", "['a', 'b']"), ("42\n", "42"), ("just text\n", "'just text'")],
)
def test_document_that_is_not_a_mapping_is_a_config_error(
    tmp_path: Path, text: str, shown: str
) -> None:
    error = recipe_error(tmp_path, text)

    assert str(error).endswith(
        f"expected a mapping of recipe sections (dataset, architecture, training, ...), got {shown}"
    )


def test_invalid_yaml_error_gives_the_line(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "hardware:\n  device: [cpu\n")

    assert "invalid YAML at line" in str(error)
    assert error.problems[0][0] == ""


def test_undecodable_bytes_are_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL.encode() + b"notes: caf\xe9\n")

    assert "is not UTF-8 text (byte 0xe9" in str(error)


def test_binary_junk_is_a_config_error(tmp_path: Path) -> None:
    junk = bytes(range(256)) * 4

    error = recipe_error(tmp_path, junk)

    # The first byte that is not UTF-8 is 0x80, at offset 128.
    assert "is not UTF-8 text (byte 0x80 at offset 128" in str(error)
    assert str(tmp_path) in str(error)


def test_control_characters_are_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "notes: a\x00b\n")

    assert "invalid YAML" in str(error)


def test_python_object_tags_are_rejected_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = MINIMAL + f"evil: !!python/object/apply:os.system ['touch {marker}']\n"

    error = recipe_error(tmp_path, text)

    assert "python/object/apply:os.system" in str(error)
    assert "not allowed" in str(error)
    assert not marker.exists()


@pytest.mark.parametrize(
    "value", ["!!python/name:os.system", "!!python/tuple [1, 2]", "!custom {a: 1}"]
)
def test_other_non_standard_tags_are_rejected(tmp_path: Path, value: str) -> None:
    assert "is not allowed" in str(recipe_error(tmp_path, MINIMAL + f"evil: {value}\n"))


def test_several_yaml_documents_are_a_config_error(tmp_path: Path) -> None:
    assert "invalid YAML" in str(recipe_error(tmp_path, MINIMAL + "---\nmore: 1\n"))


def test_impossible_date_is_a_config_error_with_its_position(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "notes:\n  when: 2024-13-45\n")

    assert "line 8" in str(error)
    assert "cannot read this value" in str(error)


@pytest.mark.parametrize(
    ("text", "path", "fragment"),
    [
        ("notes: !!set {a, b}\n", "notes", "expected plain data"),
        ("notes: !!binary aGVsbG8=\n", "notes", "expected plain data"),
        ("notes: {1: a}\n", "notes", "key 1 (int) is not a string"),
        ("notes: {on: a}\n", "notes", "key True (bool) is not a string"),
        ("notes: [.nan]\n", "notes[0]", "got NaN"),
    ],
)
def test_values_json_cannot_hold_are_config_errors(
    tmp_path: Path, text: str, path: str, fragment: str
) -> None:
    error = recipe_error(tmp_path, MINIMAL + text)

    assert fragment in problem_at(error, path)


def test_recursive_yaml_alias_is_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "loop: &a [1, *a]\n")

    assert problem_at(error, "loop[1]") == "refers to itself (a recursive YAML alias)"


@pytest.mark.timeout(20)
def test_yaml_alias_bomb_is_a_config_error(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 6):  # a5 alone stands for a million values
        below = f"*a{level - 1}"
        levels.append(f"a{level}: &a{level} [{', '.join([below] * 10)}]")
    error = recipe_error(tmp_path, MINIMAL + "\n".join(levels) + "\n")

    # a4 is the first level past the bound: 111111 values.
    assert problem_at(error, "a4") == (
        "too big once its YAML aliases are expanded: more than the 100000 values a recipe may hold"
    )


def test_nesting_beyond_the_limit_is_a_config_error() -> None:
    deep: Any = "leaf"
    for _ in range(150):
        deep = {"k": deep}

    error = config_error(minimal(deep=deep))

    assert any("nested more than 100 levels" in message for _, message in error.problems)


MAX_RECIPE_BYTES = 2 * 1024 * 1024
TOO_MANY_CHARACTERS = (
    "too big once its YAML aliases are expanded: more than the 2097152 characters of text "
    "a recipe may hold"
)
TOO_MANY_VALUES_AS_WRITTEN = "too big as written: more than the 100000 values a recipe may hold"


def padded_to(size: int, text: str) -> str:
    """``text`` with a comment line appended so that it is exactly ``size`` bytes."""
    padding = size - len(text.encode("utf-8")) - len("#\n")
    assert padding >= 0
    return text + "#" + "x" * padding + "\n"


@pytest.mark.timeout(20)
def test_one_long_string_repeated_through_aliases_is_a_config_error(tmp_path: Path) -> None:
    # A 1 MB file that would be 1 GB of text once written out again.
    text = MINIMAL + f"big: &b '{'x' * 1_000_000}'\n" + f"many: [{', '.join(['*b'] * 1000)}]\n"
    assert len(text.encode()) < MAX_RECIPE_BYTES

    error = recipe_error(tmp_path, text)

    assert error.problems == [("many", TOO_MANY_CHARACTERS)]
    assert str(error) == f"many in {tmp_path / 'recipe.yaml'}: {TOO_MANY_CHARACTERS}"


@pytest.mark.timeout(20)
def test_billion_laughs_is_a_config_error(tmp_path: Path) -> None:
    levels = ['l0: &l0 "lol"']
    for level in range(1, 10):  # l9 stands for a billion "lol"s
        levels.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10)}]")

    error = recipe_error(tmp_path, MINIMAL + "\n".join(levels) + "\n")

    # l5 holds 111111 values: the first level past the bound, where the walk stops.
    assert error.problems == [
        (
            "l5",
            "too big once its YAML aliases are expanded: more than the 100000 values a "
            "recipe may hold",
        )
    ]


@pytest.mark.timeout(20)
def test_aliases_within_the_bounds_load_expanded(tmp_path: Path) -> None:
    text = MINIMAL + "base: &base {lr: 0.1, tags: [a, b]}\nruns: [*base, *base]\n"

    cfg = Config.from_recipe(write_recipe(tmp_path, text))

    assert cfg.pipeline["runs"] == [{"lr": 0.1, "tags": ["a", "b"]}] * 2


@pytest.mark.timeout(20)
def test_recipe_larger_than_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, padded_to(MAX_RECIPE_BYTES + 1, MINIMAL))

    assert error.problems == [("", "is 2097153 bytes; a recipe may be at most 2097152")]


@pytest.mark.timeout(20)
def test_recipe_that_grows_past_the_limit_after_it_was_measured_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_recipe(tmp_path, padded_to(MAX_RECIPE_BYTES + 1, MINIMAL))
    measured = path.stat()
    # As the file measured just before it grew (or a /proc file, which says 0 bytes).
    as_measured = os.stat_result((*measured[:6], 100, *measured[7:]))
    real_stat = Path.stat

    def stat_before_growing(self: Path, **kwargs: Any) -> os.stat_result:
        return as_measured if self == path else real_stat(self, **kwargs)

    monkeypatch.setattr(Path, "stat", stat_before_growing)

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path)

    assert caught.value.problems == [
        ("", "is more than 2097152 bytes; a recipe may be at most that")
    ]


@pytest.mark.timeout(20)
def test_recipe_of_exactly_the_limit_loads(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, padded_to(MAX_RECIPE_BYTES, MINIMAL))
    assert path.stat().st_size == MAX_RECIPE_BYTES

    assert Config.from_recipe(path).training.seed == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "bulk",
    [
        "[" + "1," * 600_000 + "1]",  # a million values would fit in 2 MiB of flow list
        "\n" + "".join(f"  k{index}: {index}\n" for index in range(120_000)),
    ],
    ids=["flow-list", "block-mapping"],
)
def test_recipe_of_the_limit_holding_too_many_values_is_a_config_error(
    tmp_path: Path, bulk: str
) -> None:
    path = write_recipe(tmp_path, padded_to(MAX_RECIPE_BYTES, MINIMAL + "bulk: " + bulk + "\n"))
    assert path.stat().st_size == MAX_RECIPE_BYTES

    with pytest.raises(ConfigError) as caught:
        Config.from_recipe(path)

    assert caught.value.problems == [("", TOO_MANY_VALUES_AS_WRITTEN)]


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    "deep",
    [
        "[" * 5000 + "]" * 5000,
        "{a: " * 5000 + "1" + "}" * 5000,
        "\n" + "".join(" " * level + "- \n" for level in range(1, 1500)),
        "\n" + "".join(" " * level + "a:\n" for level in range(1, 1500)),
        "\n  " + "- " * 100_000 + "x",
    ],
    ids=["flow-lists", "flow-mappings", "block-lists", "block-mappings", "compact-lists"],
)
def test_yaml_nested_thousands_deep_is_a_config_error(tmp_path: Path, deep: str) -> None:
    error = recipe_error(tmp_path, MINIMAL + "deep: " + deep + "\n")

    # libyaml stops at 1000 levels, PyYAML's own parser at Python's recursion limit.
    [(path, message)] = error.problems
    assert path == ""
    assert message.startswith("invalid YAML")
    assert "exceeded maximum nesting depth" in message or "nested too deeply" in message


@pytest.mark.timeout(20)
def test_yaml_nested_deeper_than_a_recipe_may_be_names_where(tmp_path: Path) -> None:
    deep = "".join(f"{'  ' * level}k:\n" for level in range(150)) + "  " * 150 + "leaf: 1\n"

    error = recipe_error(tmp_path, MINIMAL + "deep:\n" + textwrap.indent(deep, "  "))

    assert problem_at(error, "deep" + ".k" * 99) == "is nested more than 100 levels deep"


def test_yaml_errors_give_line_and_column(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "hardware:\n  device: [cpu\n")

    assert error.problems[0][1].startswith("invalid YAML at line 9, column 1:")


@pytest.mark.parametrize(
    ("before", "character", "shown"),
    [("notes: a", "\x00", "U+0000"), ("notes: é€😀", "\x07", "U+0007")],
)
def test_characters_yaml_forbids_are_named_with_their_position(
    tmp_path: Path, before: str, character: str, shown: str
) -> None:
    error = recipe_error(tmp_path, MINIMAL + before + character + "\n")

    # The position counts characters, whatever the UTF-8 length of those before it.
    position = len(MINIMAL + before)
    assert error.problems[0][1].startswith(
        f"invalid YAML: character {shown} at position {position} is not allowed in YAML"
    )


def test_lone_surrogate_in_an_override_is_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["dataset.name=ab\ud800"])

    assert problem_at(error, "overrides[0]") == (
        "override 'dataset.name=ab\\ud800': the value is invalid YAML: character U+D800 at "
        "position 2 is not allowed in YAML"
    )


@pytest.mark.timeout(20)
def test_override_value_nested_thousands_deep_is_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["x=" + "[" * 5000 + "]" * 5000])

    assert "the value is invalid YAML" in problem_at(error, "overrides[0]")


@pytest.mark.timeout(20)
def test_override_path_and_value_together_are_bounded_in_depth(tmp_path: Path) -> None:
    path = ".".join(["a"] * 60)

    error = recipe_error(tmp_path, MINIMAL, overrides=[f"{path}=" + "[" * 60 + "]" * 60])

    assert "is nested more than 100 levels deep" in problem_at(error, path)


@pytest.mark.timeout(20)
def test_alias_bomb_in_an_override_is_a_config_error(tmp_path: Path) -> None:
    bomb = "[&a [&b [&c [&d [&e [&f [1,1,1,1,1,1,1,1,1,1]" + ",*f" * 9 + "]"
    bomb += "".join(f"{f',*{name}' * 9}]" for name in "edcba")
    # the value is 1 list of 10 lists of ... 10^6 ones

    error = recipe_error(tmp_path, MINIMAL, overrides=[f"training.grid={bomb}"])

    message = problem_at(error, "overrides[0]")
    assert message.endswith(
        "the value at [0][0] is too big once its YAML aliases are expanded: more than the "
        "100000 values all overrides together may hold"
    )


@pytest.mark.timeout(20)
def test_overrides_together_hold_no_more_than_a_recipe(tmp_path: Path) -> None:
    ones = "[" + ",".join(["1"] * 40_000) + "]"

    error = recipe_error(tmp_path, MINIMAL, overrides=[f"x{index}={ones}" for index in range(3)])

    # Each alone is within the bound; the third takes them past it together.
    assert [path for path, _ in error.problems] == ["overrides[2]"]
    assert error.problems[0][1].endswith(
        "the value is too big as written: more than the 100000 values all overrides "
        "together may hold"
    )


@pytest.mark.timeout(20)
def test_overrides_together_are_no_longer_than_a_recipe(tmp_path: Path) -> None:
    long_text = "x" * (MAX_RECIPE_BYTES // 2)

    error = recipe_error(tmp_path, MINIMAL, overrides=[f"a={long_text}", f"b={long_text}"])

    [(path, message)] = error.problems
    assert path == "overrides[1]"
    assert message.endswith(
        "is too long: all overrides together may be at most 2097152 characters, the most a "
        "recipe may be"
    )


@pytest.mark.timeout(20)
@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("hardware.cpu_threads=99999999999999999999", "hardware.cpu_threads"),
        ("hardware.num_workers=1" + "0" * 400, "hardware.num_workers"),
        ("hardware.num_workers=100000", "hardware.num_workers"),
        ("training.seed=99999999999999999999", "training.seed"),
        ("training.seed=4294967296", "training.seed"),
        ("telemetry.log_interval=-1", "telemetry.log_interval"),
        ("infrastructure.lock.timeout_s=1" + "0" * 400, "infrastructure.lock.timeout_s"),
        ("infrastructure.lock.timeout_s=-.inf", "infrastructure.lock.timeout_s"),
    ],
)
def test_huge_numbers_are_config_errors_naming_the_field(
    tmp_path: Path, override: str, path: str
) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=[override])

    [(where, message)] = error.problems
    assert where == path
    assert message.startswith("expected ")
    assert message.endswith(f"(set by override {override!r})")


def test_integer_too_long_to_read_is_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "notes: 1" + "0" * 5000 + "\n")

    assert "cannot read this value" in error.problems[0][1]


def test_integer_too_long_to_write_is_a_config_error() -> None:
    error = config_error(minimal(telemetry={"log_interval": 10**5000}))

    assert problem_at(error, "telemetry.log_interval") == (
        "expected an integer of at most 4300 digits, got one of 16610 bits"
    )


@pytest.mark.parametrize("seed", [-1, 0, 2**31, 2**32 - 1, 2**32, 2**64])
def test_seeds_the_config_accepts_are_those_numpy_and_torch_accept(seed: int) -> None:
    import numpy as np
    import torch

    from orchestrator_fsm.seeds import SeedTree

    try:
        Config.from_dict(minimal(training={"seed": seed}))
        accepted = True
    except ConfigError:
        accepted = False
    try:
        # What set_seed hands the seed to, on generators of their own.
        np.random.RandomState(seed)
        torch.Generator().manual_seed(seed)
        SeedTree(seed)
        runs = True
    except (ValueError, RuntimeError, OverflowError):
        runs = False

    assert accepted == runs


def test_lock_timeout_may_be_infinite_and_the_lock_then_waits_without_giving_up(
    tmp_path: Path,
) -> None:
    from orchestrator_fsm.phases.lock import InfrastructureManager

    lock_path = tmp_path / "run.lock"
    cfg = Config.from_dict(
        minimal(infrastructure={"lock": {"timeout_s": float("inf"), "path": str(lock_path)}})
    )
    assert cfg.infrastructure.lock.timeout_s == float("inf")
    naps: list[float] = []

    class GaveUpWaiting(Exception):
        pass

    def nap(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 20:
            raise GaveUpWaiting

    holder = InfrastructureManager()
    holder.prepare_environment(cfg)
    try:
        with pytest.raises(GaveUpWaiting):
            InfrastructureManager(sleep=nap).prepare_environment(cfg)
    finally:
        holder.release_resources(cfg)

    assert max(naps) <= 0.5


FALLBACK_SCRIPT = """
import json, sys
import yaml
yaml.__with_libyaml__ = False  # before the config package picks its loader
from orchestrator_fsm.config import Config
from orchestrator_fsm import _yaml
from orchestrator_fsm.errors import ConfigError

assert issubclass(_yaml.Loader, yaml.SafeLoader)
outcomes = []
for path in sys.argv[1:]:
    try:
        outcomes.append(Config.from_recipe(path).dump_serialized())
    except ConfigError as exc:
        outcomes.append(exc.problems)
print(json.dumps(outcomes))
"""


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_pure_python_yaml_loader_reports_the_same_problems(tmp_path: Path) -> None:
    laughs = ["l0: &l0 lol"]
    laughs += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    texts = [
        MINIMAL + "big: &b '" + "x" * 300_000 + "'\nmany: [" + ", ".join(["*b"] * 10) + "]\n",
        MINIMAL + "\n".join(laughs) + "\n",
        MINIMAL + "bulk: [" + "1," * 100_001 + "1]\n",
        MINIMAL + "deep:\n" + "".join(f"{'  ' * (level + 1)}k:\n" for level in range(150)),
        MINIMAL + "loop: &a [1, *a]\n",
        MINIMAL + "notes: é\x00\n",
        MINIMAL + "hardware:\n  device: [cpu\n",
        MINIMAL + "notes:\n  when: 2024-13-45\n",
        MINIMAL + "evil: !!python/name:os.system\n",
        MINIMAL + "base: &base {lr: 0.1}\nruns: [*base, {<<: *base, lr: 0.2}]\n",
        MINIMAL + "optim:\n  lr: 1e-3\n  wd: 5E-4\n  eps: '1e-8'\n  lr: 2\n",
        MINIMAL + "optim: {lr: 1e-3, wd: -2.5e+3, eps: '1e-8'}\n",
    ]
    paths = [
        write_recipe(tmp_path, text, name=f"recipe{index}.yaml") for index, text in enumerate(texts)
    ]
    result = subprocess.run(
        [sys.executable, "-c", FALLBACK_SCRIPT, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def outcome(loaded: Any) -> Any:
        # The two parsers word syntax errors differently; where they are is the same.
        if isinstance(loaded, dict):
            return loaded
        return [
            [path, re.sub(r"^(invalid YAML at line \d+, column \d+):.*", r"\1", message)]
            for path, message in loaded
        ]

    expected = []
    for path in paths:
        try:
            expected.append(outcome(Config.from_recipe(path).dump_serialized()))
        except ConfigError as exc:
            expected.append(outcome(exc.problems))
    assert [outcome(loaded) for loaded in json.loads(result.stdout)] == expected
    assert isinstance(expected[-1], dict)


def test_overrides_set_owned_fields_with_yaml_scalars(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    cfg = Config.from_recipe(
        path,
        overrides=[
            "hardware.reproducible=true",
            "hardware.num_workers=2",
            "telemetry.log_level=debug",
            "training.seed=7",
        ],
    )

    assert cfg.hardware.reproducible is True
    assert cfg.hardware.num_workers == 2
    assert cfg.telemetry.log_level == "DEBUG"
    assert cfg.training.seed == 7


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("7", 7),
        ("7.5", 7.5),
        ("1e-3", 0.001),
        ("'1e-3'", "1e-3"),
        ("1.0e-3", 0.001),
        ("null", None),
        ("", None),
        ("'007'", "007"),
        ("yes", True),
        ("adamw", "adamw"),
        ("a=b", "a=b"),
        ("[1, 2]", [1, 2]),
        ("{lr: 0.1}", {"lr": 0.1}),
        (" spaced ", "spaced"),
    ],
)
def test_override_values_are_read_as_yaml(tmp_path: Path, text: str, value: Any) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    cfg = Config.from_recipe(path, overrides=[f"training.optimizer={text}"])

    assert cfg.training["optimizer"] == value


def test_overrides_create_keys_and_sections_in_pipeline_data(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL + "augmentation:\n")

    cfg = Config.from_recipe(
        path,
        overrides=["training.optim.name=adamw", "export.format=onnx", "augmentation.hflip=0.5"],
    )

    assert cfg.training["optim"] == {"name": "adamw"}
    assert cfg.pipeline["export"] == {"format": "onnx"}
    assert cfg.pipeline["augmentation"] == {"hflip": 0.5}


def test_later_override_of_the_same_key_wins(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    cfg = Config.from_recipe(path, overrides=["training.seed=3", "training.seed=4"])

    assert cfg.training.seed == 4


def test_overridden_values_are_validated_and_name_the_override(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["training.seed=-1"])

    assert error.problems == [
        (
            "training.seed",
            "expected an integer in [0, 2**32), got -1 (set by override 'training.seed=-1')",
        )
    ]


def test_override_of_an_unknown_owned_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["hardware.devcie=cpu"])

    message = problem_at(error, "hardware.devcie")
    assert "did you mean 'device'?" in message
    assert "(set by override 'hardware.devcie=cpu')" in message


@pytest.mark.parametrize(
    ("override_text", "complaint"),
    [
        ("hardware.device", "no '='"),
        ("=cpu", "empty key"),
        ("hardware..device=cpu", "empty key"),
        (".device=cpu", "empty key"),
        ("hardware.=cpu", "empty key"),
        (" =1", "empty key"),
    ],
)
def test_malformed_override_is_a_config_error_naming_it(
    tmp_path: Path, override_text: str, complaint: str
) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["training.seed=2", override_text])

    message = problem_at(error, "overrides[1]")
    assert f"malformed override {override_text!r}" in message
    assert complaint in message


def test_override_that_is_not_a_string_is_a_config_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=[("training.seed", 3)])

    assert "malformed override ('training.seed', 3)" in problem_at(error, "overrides[0]")


def test_a_single_string_of_overrides_is_a_type_error(tmp_path: Path) -> None:
    path = write_recipe(tmp_path, MINIMAL)

    with pytest.raises(TypeError, match="wrap it in a list"):
        Config.from_recipe(path, overrides="training.seed=3")


def test_override_value_that_is_not_a_scalar_is_rejected(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["tracking.name=run: 1"])

    assert "is not a YAML scalar" in problem_at(error, "overrides[0]")


def test_override_value_with_invalid_yaml_is_rejected(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL, overrides=["training.milestones=[1, 2"])

    assert "the value is invalid YAML" in problem_at(error, "overrides[0]")


def test_override_value_with_a_python_tag_is_rejected_and_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = f"training.x=!!python/object/apply:os.system ['touch {marker}']"

    error = recipe_error(tmp_path, MINIMAL, overrides=[evil])

    assert "is not allowed" in problem_at(error, "overrides[0]")
    assert not marker.exists()


def test_override_through_a_non_mapping_value_is_an_error(tmp_path: Path) -> None:
    error = recipe_error(tmp_path, MINIMAL + "task_type: detection\n", overrides=["task_type.x=1"])

    assert problem_at(error, "task_type.x") == (
        "override 'task_type.x=1' cannot set it: task_type holds 'detection', not a mapping"
    )


def test_override_problems_are_reported_with_the_file_problems(tmp_path: Path) -> None:
    error = recipe_error(
        tmp_path, MINIMAL.replace("seed: 1", "seed: -1"), overrides=["oops", "hardware.device=gpu"]
    )

    assert [path for path, _ in error.problems] == [
        "overrides[0]",
        "training.seed",
        "hardware.device",
    ]


def full_config() -> Config:
    return Config.from_recipe(
        RECIPES / "orchard_like_optuna.yaml",
        overrides=["infrastructure.lock.path=/tmp/locks/x.lock", "telemetry.output_dir=runs"],
    )


def test_dump_is_plain_json_data_with_paths_as_strings() -> None:
    dumped = full_config().dump_serialized()

    assert json.loads(json.dumps(dumped)) == dumped
    assert dumped["telemetry"]["output_dir"] == "runs"
    assert dumped["infrastructure"]["lock"]["path"] == "/tmp/locks/x.lock"
    assert dumped["hardware"]["device"] == "auto"


def test_dump_round_trips_through_from_dict() -> None:
    cfg = full_config()

    assert Config.from_dict(cfg.dump_serialized()) == cfg
    assert Config.from_dict(json.loads(json.dumps(cfg.dump_serialized()))) == cfg


def test_the_dump_shares_nothing_with_the_config() -> None:
    cfg = Config.from_dict(
        minimal(telemetry={"observers": {"pkg.mod:make": {"tags": ["a"], "extra": {"k": 1}}}})
    )
    dumped = cfg.dump_serialized()
    options = dumped["telemetry"]["observers"]["pkg.mod:make"]
    options["tags"].append("b")
    options["extra"]["k"] = 2

    again = cfg.dump_serialized()["telemetry"]["observers"]["pkg.mod:make"]
    assert again == {"tags": ["a"], "extra": {"k": 1}}


def test_a_recipe_setting_every_owned_field_is_built_normalized() -> None:
    document = minimal(
        hardware={
            "device": "CUDA:1",
            "num_workers": 2,
            "cpu_threads": 3,
            "reproducible": True,
            "deterministic_warn_only": True,
            "project_name": "p",
            "allow_process_kill": False,
        },
        telemetry={
            "output_dir": "/tmp/x",
            "log_level": "debug",
            "log_interval": 5,
            "heartbeat_s": 2,
            "console_level": "warning",
            "capture_stdout": True,
            "observers": {"tensorboard": None, "pkg.mod:make": {"a": [1, 2]}},
        },
        infrastructure={
            "lock": {"enabled": True, "timeout_s": 2, "path": "/tmp/l.lock", "scope": "PROJECT"},
            "signal_callbacks": {"USR1": "m:f"},
            "join_timeout_s": 5,
        },
    )
    cfg = Config.from_dict(document)

    assert cfg.hardware.device == "cuda:1"
    assert cfg.telemetry.log_level == "DEBUG"
    assert cfg.telemetry.observers == {"tensorboard": {}, "pkg.mod:make": {"a": [1, 2]}}
    assert cfg.infrastructure.lock.scope == "project"
    assert cfg.infrastructure.signal_callbacks == {"SIGUSR1": "m:f"}


def test_loading_a_recipe_good_or_bad_does_not_import_cattrs(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(minimal(hardware={"device": "cpu"})), encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(minimal(hardware={"devcie": "cpu"})), encoding="utf-8")
    script = textwrap.dedent(
        f"""
        import sys
        from orchestrator_fsm import Config, ConfigError
        Config.from_recipe({str(recipe)!r})
        print("cattrs" in sys.modules)
        try:
            Config.from_recipe({str(bad)!r})
        except ConfigError as exc:
            print("cattrs" in sys.modules, "did you mean 'device'" in str(exc))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True"]


def test_to_yaml_writes_a_recipe_that_loads_back_equal(tmp_path: Path) -> None:
    cfg = full_config()
    target = tmp_path / "resolved.yaml"

    cfg.to_yaml(target)

    assert Config.from_recipe(target) == cfg
    assert sorted(path.name for path in tmp_path.iterdir()) == ["resolved.yaml"]


def test_to_yaml_replaces_an_existing_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "resolved.yaml"
    target.write_text("old: " + "x" * 10_000 + "\n", encoding="utf-8")
    cfg = Config.from_dict(minimal())

    cfg.to_yaml(target)

    assert Config.from_recipe(target) == cfg
    assert "old:" not in target.read_text(encoding="utf-8")


def test_config_hash_is_sha256_hex_and_ignores_key_order() -> None:
    forward = Config.from_dict(minimal(extra={"a": 1, "b": 2}))
    backward = Config.from_dict({"extra": {"b": 2, "a": 1}, "training": {"seed": 1}, **minimal()})

    digest = forward.config_hash()

    assert re.fullmatch(r"[0-9a-f]{64}", digest), digest
    assert digest == backward.config_hash()


@pytest.mark.parametrize(
    "changed",
    [
        minimal(training={"seed": 2}),
        minimal(augmentation={"hflip": 0.5}),
        minimal(hardware={"device": "cpu"}),
        minimal(telemetry={"log_interval": 11}),
    ],
)
def test_config_hash_changes_with_any_content(changed: dict[str, Any]) -> None:
    assert Config.from_dict(changed).config_hash() != Config.from_dict(minimal()).config_hash()


def test_config_hash_is_computed_once_and_follows_a_changed_copy() -> None:
    cfg = Config.from_dict(minimal())
    digest = cfg.config_hash()
    assert cfg.config_hash() == digest
    # A copy with other contents (attrs.evolve, as with_schema uses) hashes its own.
    changed = attrs.evolve(cfg, hardware=HardwareConfig(device="cpu"))
    assert (
        changed.config_hash() == Config.from_dict(minimal(hardware={"device": "cpu"})).config_hash()
    )
    assert changed.config_hash() != digest
    assert attrs.evolve(cfg).config_hash() == digest
    assert cfg == Config.from_dict(minimal())  # the remembered hash is not compared


def test_config_hash_is_the_same_in_another_process() -> None:
    script = (
        "from orchestrator_fsm.config import Config; "
        f"print(Config.from_recipe({str(RECIPES / 'orchard_like_optuna.yaml')!r}).config_hash())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}

    other = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )

    expected = Config.from_recipe(RECIPES / "orchard_like_optuna.yaml").config_hash()
    assert other.stdout.strip() == expected


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "db_PASSWORD",
        "passwd",
        "client_secret",
        "hf_token",
        "API_KEY",
        "openai-api-key",
        "apikey",
        "private_key",
        "gcp_credentials",
    ],
)
def test_values_of_secret_looking_keys_are_redacted(key: str) -> None:
    assert redact_secrets({key: "s3cr3t", "name": "kept"}) == {key: "***", "name": "kept"}


def test_redaction_reaches_into_nested_mappings_and_lists() -> None:
    data = {
        "tracking": {"servers": [{"url": "http://x", "token": "abc"}, {"token": "def"}]},
        "credentials": {"user": "u", "key": "k"},
        "matrix": [[{"secret": 1}]],
    }

    assert redact_secrets(data) == {
        "tracking": {"servers": [{"url": "http://x", "token": "***"}, {"token": "***"}]},
        "credentials": "***",
        "matrix": [[{"secret": "***"}]],
    }


@pytest.mark.parametrize(
    ("text", "redacted"),
    [
        ("postgresql://optuna:hunter2@db:5432/x", "postgresql://optuna:***@db:5432/x"),
        ("redis://:pw@cache", "redis://:***@cache"),
        ("mysql+pymysql://u:p@ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("use a://u:p@h and b://v:q@k", "use a://u:***@h and b://v:***@k"),
        ("https://user@host/path", "https://user@host/path"),
        ("https://host:8080/a@b", "https://host:8080/a@b"),
        ("plain text: with colon @ sign", "plain text: with colon @ sign"),
    ],
)
def test_url_passwords_are_redacted_in_any_string(text: str, redacted: str) -> None:
    assert redact_secrets({"storage": text, "list": [text]}) == {
        "storage": redacted,
        "list": [redacted],
    }


def test_redaction_copies_and_keeps_what_is_not_secret() -> None:
    data: dict[Any, Any] = {
        "token": None,
        "lr": 0.1,
        "tags": ("a", "b"),
        "milestones": [10, 20],
        3: {"password": "x"},
    }

    redacted = redact_secrets(data)
    redacted["milestones"].append(30)

    assert redacted == {
        "token": None,
        "lr": 0.1,
        "tags": ("a", "b"),
        "milestones": [10, 20, 30],
        3: {"password": "***"},
    }
    assert data["milestones"] == [10, 20]
    assert data[3] == {"password": "x"}


def test_redacted_dump_of_a_recipe_hides_its_database_password() -> None:
    dumped = redact_secrets(full_config().dump_serialized())

    assert dumped["optuna"]["postgresql_url"] == "postgresql://optuna:***@db.internal:5432/studies"
    assert "hunter2" not in json.dumps(dumped)


def test_to_yaml_keeps_strings_with_yaml_line_break_characters(tmp_path: Path) -> None:
    cfg = Config.from_dict(minimal(dataset={"name": "a\x85b", "notes": ["\x85", "x\u2028y"]}))

    cfg.to_yaml(tmp_path / "resolved.yaml")

    assert Config.from_recipe(tmp_path / "resolved.yaml") == cfg


def test_to_yaml_leaves_the_old_file_whole_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "resolved.yaml"
    Config.from_dict(minimal()).to_yaml(target)
    before = target.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        Config.from_dict(minimal(training={"seed": 2})).to_yaml(target)

    assert target.read_bytes() == before
    assert [path.name for path in tmp_path.iterdir()] == ["resolved.yaml"]


def test_a_field_with_several_faults_is_reported_once() -> None:
    error = config_error(minimal(dataset={"name": float("nan")}))

    assert [path for path, _ in error.problems] == ["dataset.name"]


def test_numpy_numbers_from_generated_sweeps_become_plain_numbers() -> None:
    import numpy as np

    cfg = Config.from_dict(
        minimal(
            training={"seed": np.int64(5), "lr": np.float32(0.5)},
            hardware={"num_workers": np.int32(2)},
        )
    )

    assert cfg.training.seed == 5
    assert type(cfg.training.seed) is int
    assert type(cfg.training["lr"]) is float
    assert cfg.hardware.num_workers == 2
    assert json.loads(json.dumps(cfg.dump_serialized())) == cfg.dump_serialized()


def test_objects_that_are_not_plain_data_are_rejected() -> None:
    error = config_error(minimal(training={"seed": 1, "callback": print, "blob": b"\x00"}))

    assert problem_at(error, "training.callback").startswith("expected plain data")
    assert problem_at(error, "training.blob").startswith("expected plain data")


@pytest.mark.parametrize(
    "key",
    ["db_password", "dbPassword", "apiKey", "API_KEY", "openai-api-key", "private_key",
     "token", "hf_token", "accessToken", "AUTH_TOKEN", "HFToken", "client_secret",
     "gcp_credentials", "passwd"],
)  # fmt: skip
def test_secret_looking_keys_are_redacted(key: str) -> None:
    assert redact_secrets({key: "s3cr3t"}) == {key: "***"}


@pytest.mark.parametrize("key", ["max_tokens", "maxTokens", "tokenizer", "num_tokens", "seed"])
def test_ordinary_keys_that_merely_contain_token_are_kept(key: str) -> None:
    assert redact_secrets({key: 512}) == {key: 512}
