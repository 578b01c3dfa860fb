"""Whatever a recipe file or an override holds, loading it gives a Config or a ConfigError.

And every Config that loads survives its own serialization unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from orchestrator_fsm import _yaml as yaml_rules
from orchestrator_fsm.config import Config, redact_secrets
from orchestrator_fsm.errors import ConfigError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

VALID_RECIPE = """\
dataset:
  name: digits
architecture:
  name: tiny_mlp
training:
  seed: 1
hardware:
  device: cpu
"""

HARDWARE_KEYS = [
    "device",
    "num_workers",
    "cpu_threads",
    "reproducible",
    "deterministic_warn_only",
    "project_name",
    "allow_process_kill",
]
TELEMETRY_KEYS = ["output_dir", "log_level", "log_interval"]
LOCK_KEYS = ["enabled", "timeout_s", "path"]
SLUG = r"[a-z0-9]{1,8}(?:[_-][a-z0-9]{1,8}){0,3}"

# Values chosen to hit both sides of every owned field's rule.
interesting_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=2**33),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["cpu", "CUDA:1", "cuda:-1", "auto", "mps", "gpu", "info", "DEBUG", "loud", "yes", ""]
    ),
    st.sampled_from(["orchard_ml", "My Project", "outputs", "/tmp/x.lock", "a\x00b"]),
    st.text(max_size=12),
)

plain_data = st.recursive(
    interesting_scalars | st.dates(),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
        st.dictionaries(st.integers(-2, 2), children, max_size=2),
    ),
    max_leaves=20,
)


def owned_section(keys: list[str]) -> st.SearchStrategy[Any]:
    names = st.sampled_from([*keys, "devcie", "log_levl", "extra"])
    return st.one_of(
        st.dictionaries(names, interesting_scalars, max_size=5),
        interesting_scalars,
    )


any_recipes = st.fixed_dictionaries(
    {
        "dataset": st.fixed_dictionaries({"name": interesting_scalars}),
        "architecture": st.fixed_dictionaries({"name": interesting_scalars}),
        "training": st.fixed_dictionaries({"seed": interesting_scalars}),
    },
    optional={
        "hardware": owned_section(HARDWARE_KEYS),
        "telemetry": owned_section(TELEMETRY_KEYS),
        "infrastructure": st.one_of(
            st.fixed_dictionaries({"lock": owned_section(LOCK_KEYS)}),
            owned_section(["lock"]),
        ),
        "augmentation": plain_data,
        "task_type": interesting_scalars,
        "hardwre": plain_data,
    },
)


def with_case_changes(strategy: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(strategy, strategy.map(str.upper), strategy.map(str.title))


def allow_warn_only_only_when_reproducible(hardware: dict[str, Any]) -> dict[str, Any]:
    if hardware.get("deterministic_warn_only"):
        hardware["reproducible"] = True
    return hardware


non_blank_text = st.text(min_size=1, max_size=20).filter(lambda text: text.strip() != "")
path_text = st.text(min_size=1, max_size=20).filter(lambda text: "\x00" not in text)
json_data = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=10)
    | st.dates(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=15,
)
valid_recipes = st.fixed_dictionaries(
    {
        "dataset": st.fixed_dictionaries({"name": non_blank_text}, optional={"extra": json_data}),
        "architecture": st.fixed_dictionaries({"name": non_blank_text}),
        "training": st.fixed_dictionaries(
            {"seed": st.integers(0, 2**32 - 1)}, optional={"schedule": json_data}
        ),
    },
    optional={
        "hardware": st.fixed_dictionaries(
            {},
            optional={
                "device": with_case_changes(
                    st.sampled_from(["auto", "cpu", "cuda", "mps"])
                    | st.integers(0, 99).map("cuda:{}".format)
                ),
                "num_workers": st.none() | st.integers(0, 64),
                "cpu_threads": st.none() | st.integers(1, 64),
                "reproducible": st.booleans(),
                "deterministic_warn_only": st.booleans(),
                "project_name": st.from_regex(
                    r"[a-z0-9]{1,8}(?:[_-][a-z0-9]{1,8}){0,3}", fullmatch=True
                ),
                "allow_process_kill": st.booleans(),
            },
        ).map(allow_warn_only_only_when_reproducible),
        "telemetry": st.fixed_dictionaries(
            {},
            optional={
                "output_dir": path_text,
                "log_level": with_case_changes(
                    st.sampled_from(["debug", "info", "warning", "error", "critical"])
                ),
                "log_interval": st.integers(1, 10**6),
            },
        ),
        "infrastructure": st.fixed_dictionaries(
            {},
            optional={
                "lock": st.fixed_dictionaries(
                    {},
                    optional={
                        "enabled": st.booleans(),
                        "timeout_s": st.integers(0, 10**6) | st.floats(0, allow_nan=False),
                        "path": st.none() | path_text,
                    },
                )
            },
        ),
        "augmentation": json_data,
        "task_type": json_data,
        "optuna": json_data,
    },
)

yaml_fragments = st.lists(
    st.sampled_from(
        [
            "dataset:",
            "  name: x",
            "training:",
            "  seed: 5",
            "architecture: {name: m}",
            "hardware:",
            "  device: cuda:0",
            "&a ",
            "*a",
            "[",
            "]",
            "{",
            "}",
            ": ",
            "- ",
            "\n",
            "  ",
            "!!python/object/apply:os.system ['true']",
            "!!binary aGk=",
            "!!set {a}",
            "!!int x",
            "2024-13-45",
            ".nan",
            "? ",
            "---",
            "'",
            '"\\x00"',
            "#",
            "\t",
            "<<: *a",
        ]
    ),
    max_size=20,
).map("".join)


def dump_yaml(data: Any) -> str:
    # allow_unicode=False: with it, PyYAML writes NEL (\x85) raw and reads it back as a
    # space; escaped output reads back exactly. The package's dumper quotes text such as
    # '1e5' that YAML 1.2 reads as a number.
    return yaml.dump(data, Dumper=yaml_rules.Dumper, allow_unicode=False)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")


def load_or_config_error(path: Path, overrides: list[str] | None = None) -> Config | None:
    """Load ``path``: a Config, or None after a ConfigError; anything else fails the test."""
    try:
        return Config.from_recipe(path, overrides=overrides or [])
    except ConfigError as exc:
        assert exc.problems, "a ConfigError must say what is wrong"
        assert str(exc)
        return None


def assert_survives_serialization(cfg: Config, scratch: Path) -> None:
    dumped = cfg.dump_serialized()
    assert json.loads(json.dumps(dumped)) == dumped
    assert Config.from_dict(dumped) == cfg
    assert Config.from_dict(dumped).config_hash() == cfg.config_hash()
    written = scratch / "written.yaml"
    cfg.to_yaml(written)
    assert Config.from_recipe(written) == cfg


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text_loads_or_is_a_config_error(scratch: Path, text: str) -> None:
    path = scratch / "text.yaml"
    path.write_text(text, encoding="utf-8")

    cfg = load_or_config_error(path)

    if cfg is not None:
        assert_survives_serialization(cfg, scratch)


@FUZZ
@given(junk=st.binary(max_size=300))
def test_any_bytes_load_or_are_a_config_error(scratch: Path, junk: bytes) -> None:
    path = scratch / "junk.yaml"
    path.write_bytes(junk)

    load_or_config_error(path)


@FUZZ
@given(text=yaml_fragments | yaml_fragments.map(VALID_RECIPE.__add__))
def test_yaml_shaped_text_loads_or_is_a_config_error(scratch: Path, text: str) -> None:
    path = scratch / "fragments.yaml"
    path.write_text(text, encoding="utf-8")

    cfg = load_or_config_error(path)

    if cfg is not None:
        assert_survives_serialization(cfg, scratch)


@FUZZ
@given(recipe=any_recipes)
def test_generated_recipes_load_or_are_a_config_error(
    scratch: Path, recipe: dict[str, Any]
) -> None:
    path = scratch / "generated.yaml"
    path.write_text(dump_yaml(recipe), encoding="utf-8")

    cfg = load_or_config_error(path)

    if cfg is not None:
        assert_survives_serialization(cfg, scratch)


@pytest.mark.slow
@FUZZ
@given(recipe=valid_recipes)
def test_valid_recipes_load_and_survive_serialization(
    scratch: Path, recipe: dict[str, Any]
) -> None:
    path = scratch / "valid-generated.yaml"
    path.write_text(dump_yaml(recipe), encoding="utf-8")

    cfg = Config.from_recipe(path)

    assert cfg.training.seed == recipe["training"]["seed"]
    assert cfg.dataset.name == recipe["dataset"]["name"]
    assert Config.from_dict(recipe) == cfg
    assert_survives_serialization(cfg, scratch)


override_texts = st.one_of(
    st.text(max_size=40),
    st.builds(
        lambda path, value: f"{path}={value}",
        st.lists(
            st.sampled_from(
                ["hardware", "device", "training", "seed", "telemetry", "lock", "x", "", " "]
            ),
            min_size=1,
            max_size=4,
        ).map(".".join),
        st.one_of(st.text(max_size=15), yaml_fragments),
    ),
)


@FUZZ
@given(overrides=st.lists(override_texts, max_size=4))
def test_any_overrides_load_or_are_a_config_error(scratch: Path, overrides: list[str]) -> None:
    path = scratch / "valid.yaml"
    path.write_text(VALID_RECIPE, encoding="utf-8")

    cfg = load_or_config_error(path, overrides)

    if cfg is not None:
        assert_survives_serialization(cfg, scratch)


SECRET_KEY_NAMES = ["password", "API_KEY", "hf_token", "db-secret", "credentials"]


@FUZZ
@given(
    data=st.recursive(
        st.dictionaries(
            st.sampled_from(SECRET_KEY_NAMES), st.text(min_size=1, max_size=8), min_size=1
        ),
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3),
            st.dictionaries(st.sampled_from(["a", "b", "nested"]), children, min_size=1),
        ),
        max_leaves=8,
    )
)
def test_redaction_leaves_no_secret_value(data: Any) -> None:
    redacted = redact_secrets(data)

    def secrets_in(node: Any) -> list[Any]:
        if isinstance(node, dict):
            found = [value for key, value in node.items() if key in SECRET_KEY_NAMES]
            return found + [item for value in node.values() for item in secrets_in(value)]
        if isinstance(node, list):
            return [item for value in node for item in secrets_in(value)]
        return []

    assert secrets_in(data)
    assert set(secrets_in(redacted)) == {"***"}


HOSTILE_FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
MAX_RECIPE_BYTES = 2 * 1024 * 1024
MAX_VALUES = 100_000

# Every character, lone surrogates included: Python strings can hold them, UTF-8 not.
any_character = st.characters(exclude_categories=())
shared_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    # Long enough that a dozen aliases of a list of them pass MAX_RECIPE_BYTES, short
    # enough that writing a generated document out stays cheap (it holds each copy).
    st.sampled_from(["x" * 1000, "y" * 30_000]),
)


@st.composite
def data_with_shared_parts(draw: st.DrawFn) -> Any:
    """Plain data whose parts recur (YAML writes them as anchors and aliases).

    Each level repeats earlier ones up to a dozen times, so some documents multiply far
    past a recipe's bounds; now and then a part holds itself (a recursive alias).
    """
    pool: list[Any] = [draw(shared_scalars)]
    for _ in range(draw(st.integers(1, 8))):
        if draw(st.booleans()):  # the level below, again and again
            parts = [pool[-1]] * draw(st.integers(2, 12))
        else:
            parts = draw(st.lists(st.sampled_from(pool) | shared_scalars, max_size=12))
        node: Any = parts if draw(st.booleans()) else {f"k{i}": p for i, p in enumerate(parts)}
        if draw(st.integers(0, 9)) == 0:
            if isinstance(node, list):
                node.append(node)
            else:
                node["self"] = node
        pool.append(node)
    return pool[-1]


def expanded_weight(data: Any) -> tuple[int, int, bool]:
    """``(values, characters, recursive)`` of ``data`` with every repeat written out.

    Values as a recipe counts them (a key is not one); characters are those of every
    scalar's text as YAML holds it (before quoting), keys included.
    """
    weights: dict[int, tuple[int, int, bool]] = {}
    inside: set[int] = set()

    def weigh(node: Any) -> tuple[int, int, bool]:
        if not isinstance(node, (list, dict)):
            return 1, len(yaml.representer.SafeRepresenter().represent_data(node).value), False
        if id(node) in inside:
            return 1, 0, True
        if id(node) not in weights:
            inside.add(id(node))
            values, characters, recursive = 1, 0, False
            for key, item in node.items() if isinstance(node, dict) else enumerate(node):
                item_values, item_characters, item_recursive = weigh(item)
                values += item_values
                characters += item_characters + (len(key) if isinstance(key, str) else 0)
                recursive = recursive or item_recursive
            inside.discard(id(node))
            weights[id(node)] = values, characters, recursive
        return weights[id(node)]

    return weigh(data)


@pytest.mark.slow
@pytest.mark.timeout(300)
@HOSTILE_FUZZ
@given(extra=data_with_shared_parts())
def test_recipes_with_anchors_and_aliases_load_exactly_when_within_the_bounds(
    scratch: Path, extra: Any
) -> None:
    recipe = {
        "dataset": {"name": "d"},
        "architecture": {"name": "a"},
        "training": {"seed": 1},
        "extra": extra,
    }
    path = scratch / "shared.yaml"
    path.write_text(yaml.dump(recipe, Dumper=yaml_rules.Dumper), encoding="utf-8")
    values, characters, recursive = expanded_weight(recipe)
    within = (
        not recursive
        and values <= MAX_VALUES
        and characters <= MAX_RECIPE_BYTES
        and path.stat().st_size <= MAX_RECIPE_BYTES
    )

    cfg = load_or_config_error(path)

    event("loaded" if cfg is not None else "refused")
    for reason, applies in [
        ("recursive", recursive),
        ("too many values", values > MAX_VALUES),
        ("too much text", characters > MAX_RECIPE_BYTES),
    ]:
        if applies:
            event(reason)
    assert (cfg is not None) == within
    if cfg is not None:
        assert cfg.pipeline["extra"] == extra


hostile_texts = st.one_of(
    st.binary(max_size=400),
    st.text(any_character, max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
    yaml_fragments.map(str.encode),
    data_with_shared_parts().map(lambda data: yaml.safe_dump(data).encode("utf-8")),
)


@pytest.mark.slow
@pytest.mark.timeout(300)
@HOSTILE_FUZZ
@given(content=hostile_texts)
def test_any_recipe_file_loads_or_is_a_config_error(scratch: Path, content: bytes) -> None:
    path = scratch / "hostile.yaml"
    path.write_bytes(content)

    load_or_config_error(path)


hostile_overrides = st.builds(
    "{}={}".format,
    st.sampled_from(["training.grid", "hardware.cpu_threads", "a." * 60 + "b", "x"]),
    st.one_of(
        st.text(any_character, max_size=40),
        yaml_fragments,
        data_with_shared_parts().map(
            lambda data: "[" + yaml.safe_dump(data, default_flow_style=True) + "]"
        ),
        st.integers().map(str),
    ),
) | st.text(any_character, max_size=60)


@pytest.mark.slow
@pytest.mark.timeout(300)
@HOSTILE_FUZZ
@given(overrides=st.lists(hostile_overrides, max_size=4))
def test_any_hostile_overrides_load_or_are_a_config_error(
    scratch: Path, overrides: list[str]
) -> None:
    path = scratch / "valid.yaml"
    path.write_text(VALID_RECIPE, encoding="utf-8")

    load_or_config_error(path, overrides)
