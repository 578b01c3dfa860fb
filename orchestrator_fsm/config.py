"""The recipe: one run's configuration, read from YAML, validated, typed and frozen.

A recipe is a YAML mapping of sections. The orchestrator owns three of them and
checks them strictly (an unknown key is an error that suggests the closest valid one):

- ``hardware``: ``device`` (auto, cpu, cuda, cuda:N, mps), ``num_workers``,
  ``cpu_threads``, ``reproducible``, ``deterministic_warn_only``, ``project_name``,
  ``allow_process_kill``;
- ``telemetry``: ``output_dir``, ``log_level``, ``log_interval``;
- ``infrastructure``: ``lock`` (``enabled``, ``timeout_s``, ``path``).

Every other top-level key belongs to the pipeline and is kept verbatim. Only
``dataset.name``, ``architecture.name`` (non-empty strings) and ``training.seed`` (an
integer in ``[0, 2**32)``) are required and typed.

Recipes are read with PyYAML's safe loader only: tags that would build Python objects
are rejected. Every problem - unreadable file, invalid YAML, bad field, malformed
override - is raised as one :class:`~orchestrator_fsm.errors.ConfigError` whose
``problems`` name each bad field by its dotted path.

Typical use::

    cfg = Config.from_recipe("recipe.yaml", overrides=["training.seed=7"])
    cfg.training.seed, cfg.hardware.effective_num_workers, cfg.training.get("epochs", 10)
"""

from __future__ import annotations

import copy
import datetime
import difflib
import hashlib
import json
import logging
import math
import numbers
import os
import re
import reprlib
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import attrs
import cattrs
import yaml
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn, override

from orchestrator_fsm._fs import atomic_write_text, slugify
from orchestrator_fsm.errors import ConfigError

__all__ = [
    "ArchitectureConfig",
    "Config",
    "DatasetConfig",
    "HardwareConfig",
    "InfrastructureConfig",
    "LockConfig",
    "PipelineSection",
    "TelemetryConfig",
    "TrainingConfig",
    "redact_secrets",
]

DICT_SOURCE_LABEL = "<dict>"
"""How errors name the origin of a config built by :meth:`Config.from_dict` without a source."""

REDACTED = "***"
"""What :func:`redact_secrets` puts in place of a secret."""

# Markers that mean "secret" wherever they appear in a key, even run together with
# other words ("dbpassword", "openaiapikey").
_SECRET_KEY_MARKERS = ("password", "passwd", "secret", "apikey", "privatekey", "credentials")
# "token" only as a word of its own ("hf_token", "accessToken", "token"): as a substring
# it would hide ordinary settings such as "max_tokens" or "tokenizer".
_SECRET_KEY_WORDS = frozenset({"token"})
_KEY_WORD_BOUNDARY = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")

# scheme://user:password@host - the password may itself contain '@' (greedy up to the
# last '@' before the path), never '/', '?', '#' or whitespace.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)[^/?#\s]+@")

_DEVICE = re.compile(r"auto|cpu|cuda|cuda:(?P<index>[0-9]+)|mps", re.ASCII)
_DEVICE_CHOICES = "one of auto, cpu, cuda, cuda:N (N a non-negative integer), mps"
_PROJECT_NAME_MAX = 80
_SEED_LIMIT = 2**32

# A recipe is a small document; these bounds turn hostile or broken input (a YAML
# alias bomb, a runaway generator) into a ConfigError instead of a hang.
_MAX_RECIPE_BYTES = 16 * 1024 * 1024
_MAX_VALUES = 100_000
_MAX_DEPTH = 100
# A ConfigError lists at most this many problems in its message (all are in .problems).
_MAX_LISTED_PROBLEMS = 50
# A top-level key this similar to an absent owned section's name is taken for a typo
# of it (0.85 lets one letter slip in a name of 8, but not an added word).
_MISSPELT_SECTION_SIMILARITY = 0.85

_CHECK = "orchestrator_fsm.config.check"


class _MissingType:
    """Stands for a key that is absent, so that checks can say so."""


_MISSING: Any = _MissingType()

_short_repr = reprlib.Repr()
_short_repr.maxstring = 80
_short_repr.maxother = 80
_short_repr.maxlevel = 3
_short_repr.maxlist = _short_repr.maxtuple = _short_repr.maxdict = 6


def _show(value: object) -> str:
    """``value`` as a short, unambiguous piece of an error message."""
    if value is _MISSING:
        return "nothing (it is missing)"
    return _short_repr.repr(value)


class _Problem(ValueError):
    """What is wrong with one field; ``str()`` is the human-readable description."""


class _Invalid(_Problem):
    def __init__(self, expected: str, got: object) -> None:
        super().__init__(f"expected {expected}, got {_show(got)}")


class _UnknownKey(_Problem):
    def __init__(self, key: object, known: list[str]) -> None:
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        super().__init__(f"unknown key {_show(key)}; {hint}(valid keys: {', '.join(known)})")


def _checked(check: Callable[[object], object]) -> dict[str, object]:
    """Field metadata naming the function that validates and normalizes the field's value."""
    return {_CHECK: check}


def _strict_bool(value: object) -> bool:
    # YAML's own booleans (true/false, yes/no, on/off unquoted) arrive as bool; a quoted
    # "yes", 1 or "false" must not pass as truthy or falsy.
    if isinstance(value, bool):
        return value
    raise _Invalid("true or false", value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count_or_auto(minimum: int) -> Callable[[object], int | None]:
    def check(value: object) -> int | None:
        if value is None:
            return None
        if _is_int(value) and cast(int, value) >= minimum:
            return int(cast(int, value))
        raise _Invalid(f"an integer >= {minimum}, or null for automatic", value)

    return check


def _positive_int(value: object) -> int:
    if _is_int(value) and cast(int, value) >= 1:
        return int(cast(int, value))
    raise _Invalid("an integer >= 1", value)


def _device(value: object) -> str:
    if isinstance(value, str):
        match = _DEVICE.fullmatch(value.lower())
        if match is not None:
            index = match.group("index")
            return match.group(0) if index is None else f"cuda:{int(index)}"
    raise _Invalid(_DEVICE_CHOICES, value)


def _project_name(value: object) -> str:
    # The name becomes part of the lock file's name, so it must already be a slug.
    if isinstance(value, str) and value and slugify(value, max_length=_PROJECT_NAME_MAX) == value:
        return value
    expected = (
        f"a slug of at most {_PROJECT_NAME_MAX} characters from [a-z0-9_-], "
        "not starting or ending with '-' or '_'"
    )
    if isinstance(value, str) and value.strip():
        expected += f" (such as {slugify(value, max_length=_PROJECT_NAME_MAX)!r})"
    raise _Invalid(expected, value)


def _path(value: object) -> Path:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str) and text and "\x00" not in text:
        return Path(text)
    raise _Invalid("a non-empty path", value)


def _optional_path(value: object) -> Path | None:
    return None if value is None else _path(value)


def _log_level(value: object) -> str:
    if isinstance(value, str) and value.strip():
        name = value.upper()
        # getLevelName maps a registered name to its number and anything else to a string.
        if isinstance(logging.getLevelName(name), int):
            return name
    raise _Invalid("a logging level name (DEBUG, INFO, WARNING, ERROR or CRITICAL)", value)


def _seconds(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    raise _Invalid("a number of seconds >= 0 (0 = fail at once)", value)


def _section_name(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise _Invalid("a non-empty string", value)


def _seed(value: object) -> int:
    if _is_int(value) and 0 <= cast(int, value) < _SEED_LIMIT:
        return int(cast(int, value))
    raise _Invalid("an integer in [0, 2**32)", value)


def _available_cpus() -> int:
    # The CPUs this process may run on (a container or taskset may allow fewer than
    # the machine has).
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@attrs.frozen
class HardwareConfig:
    """The ``hardware`` section: device, parallelism, determinism and lock naming.

    Build it through :meth:`Config.from_recipe` or :meth:`Config.from_dict`, which
    validate and normalize every field; constructing it directly checks nothing.
    """

    device: str = attrs.field(default="auto", metadata=_checked(_device))
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (stored lower-case)."""
    num_workers: int | None = attrs.field(default=None, metadata=_checked(_count_or_auto(0)))
    """DataLoader workers; ``None`` picks a number from the available CPUs."""
    cpu_threads: int | None = attrs.field(default=None, metadata=_checked(_count_or_auto(1)))
    """Torch intra-op threads; ``None`` lets the runtime phase decide."""
    reproducible: bool = attrs.field(default=False, metadata=_checked(_strict_bool))
    """Deterministic algorithms on, data loaded in the main process."""
    deterministic_warn_only: bool = attrs.field(default=False, metadata=_checked(_strict_bool))
    """Only warn on non-deterministic operations; requires ``reproducible``."""
    project_name: str = attrs.field(default="orchestrator-fsm", metadata=_checked(_project_name))
    """A slug; runs of the same project share one lock."""
    allow_process_kill: bool = attrs.field(default=False, metadata=_checked(_strict_bool))
    """Accepted for compatibility with the reference system; nothing is ever killed."""

    @property
    def use_deterministic_algorithms(self) -> bool:
        """Whether torch must use deterministic algorithms: exactly when ``reproducible``."""
        return self.reproducible

    @property
    def effective_num_workers(self) -> int:
        """DataLoader workers to use.

        0 when ``reproducible`` (worker processes make data order depend on
        scheduling), else ``num_workers`` when set, else ``min(4, available CPUs - 1)``.
        """
        if self.reproducible:
            return 0
        if self.num_workers is not None:
            return self.num_workers
        return min(4, max(0, _available_cpus() - 1))


@attrs.frozen
class TelemetryConfig:
    """The ``telemetry`` section: where runs are written and how much they log."""

    output_dir: Path = attrs.field(default=Path("outputs"), metadata=_checked(_path))
    """Parent of every run directory; a relative path is relative to the working directory."""
    log_level: str = attrs.field(default="INFO", metadata=_checked(_log_level))
    """An upper-case :mod:`logging` level name (given case-insensitively)."""
    log_interval: int = attrs.field(default=10, metadata=_checked(_positive_int))
    """Log every this many steps (read by pipelines)."""


@attrs.frozen
class LockConfig:
    """``infrastructure.lock``: the per-project run lock."""

    enabled: bool = attrs.field(default=True, metadata=_checked(_strict_bool))
    timeout_s: float = attrs.field(default=0.0, metadata=_checked(_seconds))
    """How long to wait for another run to release the lock; 0 fails at once."""
    path: Path | None = attrs.field(default=None, metadata=_checked(_optional_path))
    """The lock file; ``None`` derives it from ``hardware.project_name``."""


@attrs.frozen
class InfrastructureConfig:
    """The ``infrastructure`` section."""

    lock: LockConfig = attrs.field(factory=LockConfig)


@attrs.frozen
class PipelineSection(Mapping[str, Any]):
    """A pipeline-owned section, kept verbatim and read-only.

    It is a mapping: ``section["key"]``, ``section.get("key", default)``, ``"key" in
    section``, ``dict(section)``. Values come back as copies, so changing them never
    changes the config. ``params`` is the whole section as a new dict.
    """

    _data: dict[str, Any] = attrs.field(factory=dict)
    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {}
    _expected: ClassVar[str] = "a mapping"

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._data[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    @property
    def params(self) -> dict[str, Any]:
        """The whole section as recipe-given (typed keys included), as a new dict."""
        return copy.deepcopy(self._data)


@attrs.frozen
class DatasetConfig(PipelineSection):
    """The ``dataset`` section; ``name`` is required."""

    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {"name": _section_name}
    _expected: ClassVar[str] = "a mapping with a non-empty string 'name'"

    @property
    def name(self) -> str:
        return cast(str, self._data["name"])


@attrs.frozen
class ArchitectureConfig(PipelineSection):
    """The ``architecture`` section; ``name`` is required."""

    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {"name": _section_name}
    _expected: ClassVar[str] = "a mapping with a non-empty string 'name'"

    @property
    def name(self) -> str:
        return cast(str, self._data["name"])


@attrs.frozen
class TrainingConfig(PipelineSection):
    """The ``training`` section; ``seed`` (an integer in ``[0, 2**32)``) is required."""

    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {"seed": _seed}
    _expected: ClassVar[str] = "a mapping with an integer 'seed' in [0, 2**32)"

    @property
    def seed(self) -> int:
        return cast(int, self._data["seed"])


_OWNED_SECTIONS = ("hardware", "telemetry", "infrastructure")
_TYPED_PIPELINE_SECTIONS = ("dataset", "architecture", "training")
_SECTIONS = _TYPED_PIPELINE_SECTIONS + _OWNED_SECTIONS


@attrs.frozen
class Config:
    """One run's validated configuration.

    Build it with :meth:`from_recipe` or :meth:`from_dict`. Two configs are equal when
    their contents are (``source`` is not compared).
    """

    dataset: DatasetConfig
    architecture: ArchitectureConfig
    training: TrainingConfig
    hardware: HardwareConfig = attrs.field(factory=HardwareConfig)
    telemetry: TelemetryConfig = attrs.field(factory=TelemetryConfig)
    infrastructure: InfrastructureConfig = attrs.field(factory=InfrastructureConfig)
    _extra: dict[str, Any] = attrs.field(factory=dict, alias="extra")
    source: Path | None = attrs.field(default=None, eq=False)
    """The recipe file (absolute) this config was read from, if any."""

    @classmethod
    def from_recipe(cls, path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> Config:
        """Read, override and validate the YAML recipe at ``path``.

        ``overrides`` are ``"a.b.c=value"`` strings; each value is read as a YAML
        scalar (``7``, ``true``, ``null``, ``'quoted'``; ``[..]``/``{..}`` for lists
        and mappings) and set in the recipe before validation, so it is checked like
        the file. Raises :class:`ConfigError` listing every problem found.
        """
        label = os.fspath(path)
        recipe = Path(path)
        document = _read_recipe(recipe, label)
        return _build(
            document, label=label, source=Path(os.path.abspath(recipe)), overrides=overrides
        )

    @classmethod
    def from_dict(
        cls, mapping: Mapping[str, Any], source: str | os.PathLike[str] | None = None
    ) -> Config:
        """Validate ``mapping`` (shaped like a recipe); ``mapping`` is not modified.

        ``source`` names where the data came from, in errors and as ``cfg.source``.
        Raises :class:`ConfigError` listing every problem found.
        """
        if source is None:
            return _build(mapping, label=DICT_SOURCE_LABEL, source=None, overrides=())
        return _build(mapping, label=os.fspath(source), source=Path(source), overrides=())

    @property
    def pipeline(self) -> dict[str, Any]:
        """Everything the orchestrator does not own, verbatim, as a new dict.

        That is ``dataset``, ``architecture``, ``training`` and every other top-level
        key of the recipe (``augmentation``, ``task_type``, ...).
        """
        return {
            "dataset": self.dataset.params,
            "architecture": self.architecture.params,
            "training": self.training.params,
            **copy.deepcopy(self._extra),
        }

    def dump_serialized(self) -> dict[str, Any]:
        """The whole config as plain JSON-able data (paths as strings).

        ``Config.from_dict(cfg.dump_serialized()) == cfg``. Secrets are included; pass
        the result through :func:`redact_secrets` before persisting it for others.
        """
        data = self.pipeline
        for name in _OWNED_SECTIONS:
            data[name] = _converter.unstructure(getattr(self, name))
        return data

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Atomically write :meth:`dump_serialized` as YAML to ``path``.

        The file loads back (:meth:`from_recipe`) to an equal config. Its directory
        must exist. Secrets are written as they are.
        """
        text = yaml.dump(
            self.dump_serialized(),
            Dumper=_RecipeDumper,
            sort_keys=False,
            allow_unicode=True,
            default_flow_style=False,
        )
        atomic_write_text(Path(path), text)

    def config_hash(self) -> str:
        """SHA-256 (hex) of :meth:`dump_serialized` as canonical JSON; stable across runs."""
        # json.dumps escapes every non-ASCII character by default: the text is ASCII.
        canonical = json.dumps(self.dump_serialized(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def redact_secrets(data: Any) -> Any:
    """A deep copy of ``data`` with secrets replaced by ``"***"``.

    The value of every mapping key that looks secret (contains, case-insensitively and
    with ``-`` read as ``_``: password, passwd, secret, token, api_key, apikey,
    private_key, credentials) is replaced, whatever it holds; a ``None`` value stays
    ``None`` (there is nothing to hide, and it shows the secret was not set). In every
    string, the password of a URL ``scheme://user:password@host`` is replaced.
    Mappings come back as dicts, lists as lists, tuples as tuples.
    """
    if isinstance(data, Mapping):
        return {
            key: REDACTED if value is not None and _looks_secret(key) else redact_secrets(value)
            for key, value in data.items()
        }
    if isinstance(data, list):
        return [redact_secrets(item) for item in data]
    if isinstance(data, tuple):
        return tuple(redact_secrets(item) for item in data)
    if isinstance(data, str):
        return _URL_PASSWORD.sub(rf"\g<head>{REDACTED}@", data)
    return copy.deepcopy(data)


def _looks_secret(key: object) -> bool:
    if not isinstance(key, str):
        return False
    words = [word.lower() for word in _KEY_WORD_BOUNDARY.split(key) if word]
    joined = "".join(words)
    return any(m in joined for m in _SECRET_KEY_MARKERS) or not _SECRET_KEY_WORDS.isdisjoint(words)


_converter = cattrs.Converter(detailed_validation=True)
_converter.register_unstructure_hook(Path, str)

_SectionT = TypeVar("_SectionT")
_ErrorT = TypeVar("_ErrorT", bound=Exception)
_Rule = Callable[[Mapping[Any, Any]], _Problem | None]


def _at(name: str, error: _ErrorT) -> _ErrorT:
    """Mark ``error`` as being about attribute ``name``, the way cattrs marks its own."""
    note = AttributeValidationNote(f"Structuring @ attribute {name}", name, object)
    error.__notes__ = [*getattr(error, "__notes__", []), note]
    return error


def _register_owned_section(cls: type[_SectionT], *rules: _Rule) -> None:
    """Structure ``cls`` strictly: each field through its check, unknown keys rejected.

    ``rules`` check relations between fields on the raw section; they run even when
    single fields are bad, so that one ConfigError reports everything.
    """
    fields = attrs.fields(cast(Any, cls))
    known = [field.name for field in fields]
    field_hooks: dict[str, Any] = {
        field.name: override(struct_hook=_field_hook(field.metadata[_CHECK]))
        for field in fields
        if _CHECK in field.metadata
    }
    structure_fields = make_dict_structure_fn(
        cls, _converter, _cattrs_forbid_extra_keys=False, **field_hooks
    )

    def structure(value: object, _type: object) -> _SectionT:
        if value is None:  # an empty section ("hardware:" alone) means all defaults
            value = {}
        if not isinstance(value, Mapping):
            raise _Invalid(f"a mapping of settings ({', '.join(known)})", value)
        errors: list[Exception] = [
            _at(str(key), _UnknownKey(key, known)) for key in value if key not in known
        ]
        given = {key: item for key, item in value.items() if key in known}
        instance: _SectionT | None = None
        try:
            instance = structure_fields(given, cls)
        except ClassValidationError as exc:
            errors.extend(exc.exceptions)
        errors.extend(problem for rule in rules if (problem := rule(given)) is not None)
        if errors or instance is None:
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        return instance

    _converter.register_structure_hook(cls, structure)


def _field_hook(check: Callable[[object], object]) -> Callable[[object, object], object]:
    return lambda value, _type: check(value)


def _warn_only_requires_reproducible(section: Mapping[Any, Any]) -> _Problem | None:
    reproducible = section.get("reproducible", False)
    if section.get("deterministic_warn_only") is True and reproducible is False:
        problem = _Problem(
            "deterministic_warn_only: true requires reproducible: true (warn-only mode "
            "relaxes the deterministic algorithms that only reproducible mode enables), "
            "got reproducible: false"
        )
        return _at("deterministic_warn_only", problem)
    return None


def _register_pipeline_section(cls: type[PipelineSection]) -> None:
    def structure(value: object, _type: object) -> PipelineSection:
        if not isinstance(value, Mapping):
            raise _Invalid(cls._expected, value)
        errors: list[Exception] = []
        for key, check in cls._required.items():
            try:
                check(value.get(key, _MISSING))
            except _Problem as exc:
                errors.append(_at(key, exc))
        if errors:
            raise ClassValidationError(f"While structuring {cls.__name__}", errors, cls)
        return cls(dict(value))

    _converter.register_structure_hook(cls, structure)


_register_owned_section(HardwareConfig, _warn_only_requires_reproducible)
_register_owned_section(TelemetryConfig)
_register_owned_section(LockConfig)
_register_owned_section(InfrastructureConfig)
for _section_cls in (DatasetConfig, ArchitectureConfig, TrainingConfig):
    _register_pipeline_section(_section_cls)

_structure_config_fields = make_dict_structure_fn(
    Config,
    _converter,
    _extra=override(struct_hook=lambda value, _type: dict(value)),
    source=override(omit=True),
)


def _structure_config(document: Mapping[str, Any], _type: object) -> Config:
    # An absent required section is passed on as _MISSING, so that its own hook reports
    # "expected ..., got nothing" instead of cattrs reporting a bare KeyError.
    fields: dict[str, Any] = {
        name: document.get(name, _MISSING) for name in _TYPED_PIPELINE_SECTIONS
    }
    fields.update((name, document[name]) for name in _OWNED_SECTIONS if name in document)
    fields["_extra"] = {key: value for key, value in document.items() if key not in _SECTIONS}
    return _structure_config_fields(fields, Config)


_converter.register_structure_hook(Config, _structure_config)


def _describe(error: BaseException) -> str:
    if isinstance(error, _Problem):
        return str(error)
    return f"invalid value ({type(error).__name__}: {error})"


def _problems_from(error: Exception) -> list[tuple[str, str]]:
    """``(dotted path, description)`` for each field a structuring error is about."""
    descriptions: list[str] = []

    def remember(exc: BaseException, _type: Any) -> str:
        descriptions.append(_describe(exc))
        return str(len(descriptions) - 1)

    # transform_error renders "<description> @ $.a.b"; descriptions are replaced by
    # their index so that user text containing " @ " cannot confuse the split.
    problems = []
    for entry in cattrs.transform_error(error, path="$", format_exception=remember):
        index, _, path = entry.partition(" @ ")
        problems.append((path.removeprefix("$").removeprefix("."), descriptions[int(index)]))
    return problems


class _RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reporting where a value could not be built."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, OverflowError) as exc:
            # e.g. a date like 2024-13-45, or "!!int abc": the constructors raise plain
            # errors without a position.
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from exc

    def construct_undefined(self, node: yaml.Node) -> Any:
        raise yaml.constructor.ConstructorError(
            None,
            None,
            f"the tag {node.tag!r} is not allowed: recipes hold plain data only, and tags "
            "that build Python objects are rejected",
            node.start_mark,
        )


_RecipeLoader.add_constructor(None, _RecipeLoader.construct_undefined)


class _RecipeDumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing every string so that it reads back the same."""

    def represent_str(self, data: str) -> yaml.ScalarNode:
        if "\x85" in data:
            # PyYAML may emit NEL (a YAML 1.1 line break) raw inside a plain or quoted
            # scalar, where reading folds it to a space; double quotes escape it as \N.
            return self.represent_scalar("tag:yaml.org,2002:str", data, style='"')
        return super().represent_str(data)


_RecipeDumper.add_representer(str, _RecipeDumper.represent_str)


class _YamlProblem(Exception):
    pass


def _load_yaml(text: str) -> Any:
    """Parse one YAML document with the safe loader; problems as :class:`_YamlProblem`."""
    try:
        return yaml.load(text, Loader=_RecipeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise _YamlProblem(f"invalid YAML at {where}{what}") from exc
    except yaml.reader.ReaderError as exc:
        raise _YamlProblem(
            f"invalid YAML: character {exc.character!r} at position {exc.position} is not "
            f"allowed ({exc.reason})"
        ) from exc
    except yaml.YAMLError as exc:
        raise _YamlProblem(f"invalid YAML: {exc}") from exc
    except RecursionError as exc:
        raise _YamlProblem("invalid YAML: nested too deeply") from exc


def _read_recipe(path: Path, label: str) -> Any:
    def fail(message: str) -> ConfigError:
        return _config_error(label, [("", message)], source=label)

    try:
        info = path.stat()
    except FileNotFoundError:
        raise fail("no such file") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        raise fail(f"cannot be read ({_os_reason(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise fail("is a directory, not a recipe file")
    if not stat.S_ISREG(info.st_mode):
        raise fail("is not a regular file")
    if info.st_size > _MAX_RECIPE_BYTES:
        raise fail(f"is {info.st_size} bytes; a recipe may be at most {_MAX_RECIPE_BYTES}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot be read ({_os_reason(exc)})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fail(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start} cannot "
            "be decoded)"
        ) from None
    try:
        document = _load_yaml(text)
    except _YamlProblem as exc:
        raise fail(str(exc)) from None
    if document is None:
        raise fail(
            "is empty; a recipe is a mapping with at least dataset.name, "
            "architecture.name and training.seed"
        )
    return document


def _os_reason(error: Exception) -> str:
    return (error.strerror if isinstance(error, OSError) else None) or str(error)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _TooLarge(Exception):
    pass


def _plain_data(document: object) -> tuple[Any, list[tuple[str, str]]]:
    """A fresh copy of ``document`` as plain data, and the problems found on the way.

    Plain data is what JSON can hold: mappings with string keys, lists, strings,
    numbers (NaN excluded: it never equals itself), booleans and null. Tuples become
    lists, other number types int or float, dates and times their ISO-8601 text, path
    objects their string. Anything else, recursive structures, and documents too big
    or too deep are problems.
    """
    problems: list[tuple[str, str]] = []
    count = 0
    ancestors: set[int] = set()

    def text(value: str, path: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            problems.append((path, f"expected valid Unicode text, got {_show(value)}"))
        return str(value)

    def walk(node: object, path: str, depth: int) -> Any:
        nonlocal count
        count += 1
        if count > _MAX_VALUES:
            raise _TooLarge
        if isinstance(node, (Mapping, list, tuple)):
            if id(node) in ancestors:
                problems.append((path, "refers to itself (a recursive YAML alias)"))
                return None
            if depth >= _MAX_DEPTH:
                problems.append((path, f"is nested more than {_MAX_DEPTH} levels deep"))
                return None
            ancestors.add(id(node))
            try:
                if isinstance(node, Mapping):
                    out: dict[Any, Any] = {}
                    for key, item in node.items():
                        if isinstance(key, str):
                            key = text(key, path)
                        else:
                            problems.append(
                                (
                                    path,
                                    f"key {_show(key)} ({type(key).__name__}) is not a "
                                    "string (quote it in YAML)",
                                )
                            )
                        out[key] = walk(item, _join(path, str(key)), depth + 1)
                    return out
                return [walk(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(node)]
            finally:
                ancestors.discard(id(node))
        if node is None or isinstance(node, bool):
            return node
        # numbers.Integral/Real also admit NumPy scalars, common in generated sweeps.
        if isinstance(node, numbers.Integral):
            return int(node)
        if isinstance(node, numbers.Real):
            if math.isnan(node):
                problems.append((path, "expected a number, got NaN (it never equals itself)"))
            return float(node)
        if isinstance(node, str):
            return text(node, path)
        if isinstance(node, (datetime.date, datetime.time)):
            return node.isoformat()
        if isinstance(node, os.PathLike):
            location = os.fspath(node)
            if isinstance(location, str):
                return text(location, path)
        problems.append(
            (
                path,
                "expected plain data (a mapping, list, string, number, boolean or null), "
                f"got {type(node).__name__} {_show(node)}",
            )
        )
        return node

    try:
        return walk(document, "", 0), problems
    except _TooLarge:
        message = f"holds more than {_MAX_VALUES} values (a YAML alias expanding too far?)"
        return None, [("", message)]


def _parse_override(text: object) -> tuple[list[str], Any]:
    """``(path segments, value)`` of one ``a.b.c=value`` override; raises :class:`_Problem`."""
    if not isinstance(text, str):
        raise _Problem(f"malformed override {_show(text)}: expected a 'dotted.path=value' string")
    path_text, equals, value_text = text.partition("=")
    if not equals:
        raise _Problem(f"malformed override {text!r}: no '=' (expected 'dotted.path=value')")
    segments = [segment.strip() for segment in path_text.split(".")]
    if not all(segments):
        raise _Problem(
            f"malformed override {text!r}: empty key in path {path_text.strip()!r} "
            "(expected 'dotted.path=value')"
        )
    try:
        value = _load_yaml(value_text)
    except _YamlProblem as exc:
        raise _Problem(f"override {text!r}: the value is {exc}") from None
    if isinstance(value, (dict, list)) and not value_text.lstrip().startswith(("[", "{")):
        raise _Problem(
            f"override {text!r}: the value {value_text.strip()!r} is not a YAML scalar; "
            "quote it, or write a list as [a, b] and a mapping as {k: v}"
        )
    return segments, value


def _apply_overrides(
    data: dict[Any, Any], overrides: Iterable[str]
) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Set each override in ``data``; returns ``{dotted path: override}`` and problems."""
    if isinstance(overrides, (str, bytes)):
        raise TypeError(
            f"overrides must be an iterable of 'dotted.path=value' strings, got the single "
            f"string {overrides!r}; wrap it in a list"
        )
    set_by: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for index, override_text in enumerate(overrides):
        try:
            segments, value = _parse_override(override_text)
        except _Problem as exc:
            problems.append((f"overrides[{index}]", str(exc)))
            continue
        target = ".".join(segments)
        value, value_problems = _plain_data(value)
        if value_problems:
            problems.extend(
                (target, f"override {override_text!r}: {message}") for _, message in value_problems
            )
            continue
        node = data
        for depth, key in enumerate(segments[:-1]):
            child = node.get(key)
            if child is None:  # absent, or an empty section ("augmentation:" alone)
                child = node[key] = {}
            elif not isinstance(child, dict):
                parent = ".".join(segments[: depth + 1])
                problems.append(
                    (
                        target,
                        f"override {override_text!r} cannot set it: {parent} holds "
                        f"{_show(child)}, not a mapping",
                    )
                )
                break
            node = child
        else:
            node[segments[-1]] = value
            set_by[target] = override_text
    return set_by, problems


def _misspelt_sections(document: Mapping[Any, Any]) -> list[tuple[str, str]]:
    # A misspelt owned section ("hardwre:") would otherwise be kept as pipeline data
    # while its settings silently fall back to defaults.
    problems = []
    others = [key for key in document if isinstance(key, str) and key not in _SECTIONS]
    for section in _SECTIONS:
        if section in document:
            continue
        for key in others:
            similarity = difflib.SequenceMatcher(None, key.lower(), section).ratio()
            if similarity >= _MISSPELT_SECTION_SIMILARITY:
                problems.append(
                    (key, f"unknown top-level key {key!r}; did you mean the section {section!r}?")
                )
    return problems


def _build(
    document: object, *, label: str, source: Path | None, overrides: Iterable[str]
) -> Config:
    error_source = None if source is None else label
    if not isinstance(document, Mapping):
        expected = "a mapping of recipe sections (dataset, architecture, training, ...)"
        raise _config_error(label, [("", str(_Invalid(expected, document)))], error_source)
    data, problems = _plain_data(document)
    if not isinstance(data, dict):  # too big to look at any further
        raise _config_error(label, problems, error_source)
    set_by, override_problems = _apply_overrides(data, overrides)
    problems += override_problems
    problems += _misspelt_sections(data)
    config: Config | None = None
    try:
        config = _converter.structure(data, Config)
    except (ClassValidationError, _Problem) as exc:
        problems += _problems_from(exc)
    if problems or config is None:
        raise _config_error(label, _with_origins(problems, set_by), error_source)
    return attrs.evolve(config, source=source)


def _with_origins(
    problems: list[tuple[str, str]], set_by: Mapping[str, str]
) -> list[tuple[str, str]]:
    """One problem per path (the first found), each naming the override that set it."""
    seen: set[str] = set()
    result = []
    for path, message in problems:
        if path in seen:
            continue
        seen.add(path)
        for target, override_text in set_by.items():
            if path == target or path.startswith((f"{target}.", f"{target}[")):
                message = f"{message} (set by override {override_text!r})"
                break
        result.append((path, message))
    return result


def _config_error(label: str, problems: list[tuple[str, str]], source: str | None) -> ConfigError:
    lines = [f"{f'{path} in {label}' if path else label}: {message}" for path, message in problems]
    if len(lines) == 1:
        message = lines[0]
    else:
        listed = lines[:_MAX_LISTED_PROBLEMS]
        if len(lines) > len(listed):
            listed.append(f"... and {len(lines) - len(listed)} more")
        message = f"{len(lines)} problems in {label}:\n" + "\n".join(f"  {line}" for line in listed)
    return ConfigError(message, problems=problems, source=source)
