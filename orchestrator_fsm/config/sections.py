"""The recipe's sections as frozen attrs classes, and how a recipe becomes them.

Each field of an owned section names its check in its metadata; a nested section's
check builds that section. One builder (:func:`_structure`) runs every check and
gathers every problem with its dotted path, so that one ConfigError reports them all.
cattrs is not imported here: only a pipeline schema (:mod:`.schema`) needs it.
"""

from __future__ import annotations

import copy
import difflib
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

import attrs

from orchestrator_fsm._fs import atomic_write_text, slugify
from orchestrator_fsm._specs import KNOWN_OBSERVERS, callback_signal, is_entry_spec, is_script_spec
from orchestrator_fsm._system import available_cpu_count
from orchestrator_fsm.config.problems import (
    MISSING,
    Invalid,
    Problems,
    UnknownKey,
    config_error,
    misspelt_sections,
    problems_at,
    with_origins,
)
from orchestrator_fsm.config.recipe import apply_overrides, dump_yaml, plain_data, read_recipe
from orchestrator_fsm.errors import ConfigError

if TYPE_CHECKING:
    from orchestrator_fsm.config.schema import Schema

__all__ = [
    "DICT_SOURCE_LABEL",
    "ArchitectureConfig",
    "Config",
    "DatasetConfig",
    "HardwareConfig",
    "InfrastructureConfig",
    "LockConfig",
    "MissingKeyError",
    "PipelineSection",
    "TelemetryConfig",
    "TrainingConfig",
]

DICT_SOURCE_LABEL = "<dict>"
"""How errors name the origin of a config built by :meth:`Config.from_dict` without a source."""

_DEVICE = re.compile(r"auto|cpu|cuda|cuda:(?P<index>[0-9]+)|mps", re.ASCII)
_DEVICE_CHOICES = "one of auto, cpu, cuda, cuda:N (N a non-negative integer), mps"
_PROJECT_NAME_MAX = 80
_SEED_LIMIT = 2**32

_CHECK = "orchestrator_fsm.config.check"


def _checked(check: Callable[[object], object]) -> dict[str, object]:
    """Field metadata naming the function that validates and normalizes the field's value."""
    return {_CHECK: check}


def _strict_bool(value: object) -> bool:
    # YAML's own booleans (true/false, yes/no, on/off unquoted) arrive as bool; a quoted
    # "yes", 1 or "false" must not pass as truthy or falsy.
    if isinstance(value, bool):
        return value
    raise Invalid("true or false", value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The most threads or loader workers a count may ask for. Thousands cannot be honoured:
# torch's OpenMP runtime ends the process when it fails to start its threads (16384 on
# a 2-CPU Linux box; 32768, Linux's default pid_max, crashes it), and a per-user limit of
# 4096 processes is common. 1024 is more than all but the largest machines have CPUs;
# null (automatic) follows the CPUs actually available, however many.
_MAX_COUNT = 1024


def _count_or_auto(minimum: int) -> Callable[[object], int | None]:
    def check(value: object) -> int | None:
        if value is None:
            return None
        if _is_int(value) and minimum <= cast(int, value) <= _MAX_COUNT:
            return int(cast(int, value))
        raise Invalid(f"an integer from {minimum} to {_MAX_COUNT}, or null for automatic", value)

    return check


def _positive_int(value: object) -> int:
    if _is_int(value) and cast(int, value) >= 1:
        return int(cast(int, value))
    raise Invalid("an integer >= 1", value)


def _device(value: object) -> str:
    if isinstance(value, str):
        match = _DEVICE.fullmatch(value.lower())
        if match is not None:
            index = match.group("index")
            return match.group(0) if index is None else f"cuda:{int(index)}"
    raise Invalid(_DEVICE_CHOICES, value)


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
    raise Invalid(expected, value)


def _path(value: object) -> Path:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if isinstance(text, str) and text and "\x00" not in text:
        return Path(text)
    raise Invalid("a non-empty path", value)


def _optional_path(value: object) -> Path | None:
    return None if value is None else _path(value)


_LOCK_SCOPES = ("run", "project")


def _lock_scope(value: object) -> str:
    if isinstance(value, str) and value.lower() in _LOCK_SCOPES:
        return value.lower()
    raise Invalid(f"one of {', '.join(_LOCK_SCOPES)}", value)


def _log_level(value: object) -> str:
    if isinstance(value, str) and value.strip():
        name = value.upper()
        # getLevelName maps a registered name to its number and anything else to a string.
        if isinstance(logging.getLevelName(name), int):
            return name
    raise Invalid("a logging level name (DEBUG, INFO, WARNING, ERROR or CRITICAL)", value)


def _optional_log_level(value: object) -> str | None:
    return None if value is None else _log_level(value)


def _seconds(value: object) -> float:
    # Infinity is accepted: the lock waits in capped sleeps, so it simply never gives up.
    # An integer beyond every float is not a float the lock could wait for.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        try:
            return float(value)
        except OverflowError:
            pass
    raise Invalid("a number of seconds >= 0 (0 = fail at once)", value)


# A day: a heartbeat rarer than that tells a reader nothing.
_MAX_HEARTBEAT_S = 86400.0


def _heartbeat(value: object) -> float:
    if (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (value == 0 or 0.1 <= value <= _MAX_HEARTBEAT_S)
    ):
        return float(value)
    raise Invalid(f"a number of seconds from 0.1 to {_MAX_HEARTBEAT_S:g}, or 0 for none", value)


def _section_name(value: object) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise Invalid("a non-empty string", value)


def _seed(value: object) -> int:
    if _is_int(value) and 0 <= cast(int, value) < _SEED_LIMIT:
        return int(cast(int, value))
    raise Invalid("an integer in [0, 2**32)", value)


_CALLBACK_SPEC = "a 'module:function' or 'path/to/file.py:function' string"


def _signal_callbacks(value: object) -> dict[str, str]:
    # Keys are stored as the signal's full name, so USR1 and SIGUSR1 are one setting;
    # each bad key is its own problem, at its own path (signal_callbacks.SIGFOO).
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise Invalid(f"a mapping of signal name (SIGUSR1, SIGUSR2) to {_CALLBACK_SPEC}", value)
    callbacks: dict[str, str] = {}
    given_as: dict[str, str] = {}
    problems: list[tuple[str, str]] = []
    for key, spec in value.items():
        try:
            name = callback_signal(key).name  # keys are strings here (plain_data checked)
        except ValueError as exc:
            problems.append((str(key), str(exc)))
            continue
        if name in callbacks:
            problems.append(
                (str(key), f"the same signal as {given_as[name]!r}; give each signal once")
            )
        elif not is_entry_spec(spec):
            problems.append((str(key), str(Invalid(_CALLBACK_SPEC, spec))))
        else:
            callbacks[name], given_as[name] = cast(str, spec), str(key)
    if problems:
        raise Problems(problems)
    return callbacks


_OBSERVER_SPEC = (
    f"{', '.join(KNOWN_OBSERVERS)}, or a 'module:factory' or 'path/to/file.py:factory' string"
)


def _observers(value: object) -> dict[str, dict[str, Any]]:
    # A list of specs, or specs mapped to their options: stored as the mapping.
    if value is None:
        return {}
    if isinstance(value, list):
        value = {item: {} for item in value} if all(isinstance(i, str) for i in value) else None
    if not isinstance(value, Mapping):
        raise Invalid(
            f"a list of observers ({_OBSERVER_SPEC}) or a mapping of each to its options",
            value,
        )
    observers: dict[str, dict[str, Any]] = {}
    problems: list[tuple[str, str]] = []
    for spec, options in value.items():
        if spec not in KNOWN_OBSERVERS and not is_entry_spec(spec):
            problems.append((str(spec), str(Invalid(_OBSERVER_SPEC, spec))))
        elif options is not None and not isinstance(options, Mapping):
            problems.append((str(spec), str(Invalid("a mapping of options, or nothing", options))))
        else:
            observers[str(spec)] = dict(options or {})
    if problems:
        raise Problems(problems)
    return observers


_SectionT = TypeVar("_SectionT")


def _owned_section(cls: type[_SectionT], value: object) -> _SectionT:
    """``value`` (a section of the recipe) built into ``cls``: each field through the
    check its metadata names, unknown keys rejected, then the section's rules.

    Raises :class:`Problems` listing everything wrong, each at its path in the section.
    """
    if value is None:  # an empty section ("hardware:" alone) means all defaults
        value = {}
    fields = attrs.fields(cast(Any, cls))
    known = [field.name for field in fields]
    if not isinstance(value, Mapping):
        raise Invalid(f"a mapping of settings ({', '.join(known)})", value)
    problems = [(str(key), str(UnknownKey(key, known))) for key in value if key not in known]
    kwargs: dict[str, object] = {}
    for field in fields:
        if field.name in value:
            try:
                kwargs[field.alias] = field.metadata[_CHECK](value[field.name])
            except Exception as exc:
                problems += problems_at(field.name, exc)
    for rule in _SECTION_RULES.get(cls, ()):
        problems += rule(value)
    if problems:
        raise Problems(problems)
    return cls(**kwargs)


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
    """Deterministic algorithms on; ``num_workers`` auto means 0 workers."""
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

        ``num_workers`` when set, reproducible or not (a loader seeded with
        ``orch.loader_seeding()`` gives the same batches on every run with the same
        number of workers); else 0 when ``reproducible`` (the automatic count depends on
        the machine, and which worker draws a sample's randomness depends on the
        count); else ``min(4, available CPUs - 1)``.
        """
        if self.num_workers is not None:
            return self.num_workers
        if self.reproducible:
            return 0
        return min(4, max(0, available_cpu_count() - 1))


@attrs.frozen
class TelemetryConfig:
    """The ``telemetry`` section: where runs are written and how much they log."""

    output_dir: Path = attrs.field(default=Path("outputs"), metadata=_checked(_path))
    """Parent of every run directory; a relative path is relative to the working directory."""
    log_level: str = attrs.field(default="INFO", metadata=_checked(_log_level))
    """The level of the run's log file: an upper-case :mod:`logging` level name (given
    case-insensitively)."""
    log_interval: int = attrs.field(default=10, metadata=_checked(_positive_int))
    """Log every this many steps (read by pipelines)."""
    heartbeat_s: float = attrs.field(default=30.0, metadata=_checked(_heartbeat))
    """How often a live run refreshes ``heartbeat_at`` in run.json (0: never)."""
    console_level: str | None = attrs.field(default=None, metadata=_checked(_optional_log_level))
    """The level of the console, like ``log_level``; ``None`` (the default) means
    ``log_level``. ``WARNING`` quiets the console while the file keeps every line."""
    capture_stdout: bool = attrs.field(default=True, metadata=_checked(_strict_bool))
    """Also copy what the run prints on stdout and stderr into ``logs/stdout.log`` (on by
    default: a ``print()`` is part of the run's record; ``false`` leaves the streams alone)."""
    observers: dict[str, dict[str, Any]] = attrs.field(factory=dict, metadata=_checked(_observers))
    """Observer factories (``module:factory``) to their keyword options: each is called
    as ``factory(cfg, **options)`` when the orchestrator is made, and the object it
    returns observes the run (see :mod:`orchestrator_fsm.observers`)."""

    @property
    def effective_console_level(self) -> str:
        """The console's level: ``console_level`` when set, else ``log_level``."""
        return self.log_level if self.console_level is None else self.console_level


@attrs.frozen
class LockConfig:
    """``infrastructure.lock``: the run lock that keeps conflicting launches apart."""

    enabled: bool = attrs.field(default=True, metadata=_checked(_strict_bool))
    timeout_s: float = attrs.field(default=0.0, metadata=_checked(_seconds))
    """How long to wait for another run to release the lock; 0 fails at once."""
    path: Path | None = attrs.field(default=None, metadata=_checked(_optional_path))
    """The lock file; ``None`` derives it from ``scope``."""
    scope: str = attrs.field(default="run", metadata=_checked(_lock_scope))
    """What one lock guards when ``path`` is not set: ``run`` (default), launches of the
    same run (same config and seed, same output directory), so different seeds and
    recipes run side by side; ``project``, every run of ``hardware.project_name``."""


@attrs.frozen
class InfrastructureConfig:
    """The ``infrastructure`` section."""

    lock: LockConfig = attrs.field(
        factory=LockConfig, metadata=_checked(functools.partial(_owned_section, LockConfig))
    )
    signal_callbacks: dict[str, str] = attrs.field(
        factory=dict, metadata=_checked(_signal_callbacks)
    )
    """Signal name (``SIGUSR1``, ``SIGUSR2``) to the ``module:function`` called when that
    signal arrives during the run; imported when the run starts."""
    join_timeout_s: float = attrs.field(default=300.0, metadata=_checked(_seconds))
    """How long a rank other than 0 waits for rank 0's run directory to be ready."""


class MissingKeyError(ConfigError, KeyError, AttributeError):
    """A pipeline section has no such key: ``str()`` names its dotted path and the file.

    It is a :class:`KeyError` (``section["key"]``, so ``get`` and ``in`` work as for
    any mapping) and an :class:`AttributeError` (``section.key``, so ``getattr`` with a
    default and ``hasattr`` work too).
    """

    def __str__(self) -> str:
        return str(self.args[0])


@attrs.frozen
class PipelineSection(Mapping[str, Any]):
    """A pipeline-owned section, kept verbatim and read-only.

    It is a mapping: ``section["key"]``, ``section.get("key", default)``, ``"key" in
    section``, ``dict(section)``; and its keys are attributes: ``section.key``. Values
    come back as copies, so changing them never changes the config. ``params`` is the
    whole section as a new dict. With a pipeline schema (``Config.with_schema``),
    attributes are the schema's typed, defaulted fields and ``typed`` is the attrs
    instance; the mapping stays the recipe's data.
    """

    _data: dict[str, Any] = attrs.field(factory=dict)
    _typed: object | None = attrs.field(default=None, eq=False, alias="typed")
    _label: str = attrs.field(default=DICT_SOURCE_LABEL, eq=False, alias="label")
    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {}
    _expected: ClassVar[str] = "a mapping"
    _section: ClassVar[str] = "section"

    def _missing(self, key: object) -> MissingKeyError:
        path = f"{self._section}.{key}"
        known = [*self._data, *self._typed_fields()]
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        message = f"{path} is not in {self._label}{hint}"
        return MissingKeyError(message, problems=[(path, "not in the recipe")], source=self._label)

    def _typed_fields(self) -> list[str]:
        if self._typed is None:
            return []
        return [field.name for field in attrs.fields(cast(Any, type(self._typed)))]

    def __getitem__(self, key: str) -> Any:
        try:
            return copy.deepcopy(self._data[key])
        except KeyError:
            raise self._missing(key) from None

    def __getattr__(self, name: str) -> Any:
        # Only called when ordinary lookup fails: the mapping's methods and properties win.
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._typed_fields():
            return copy.deepcopy(getattr(self._typed, name))
        if name in self._data:
            return copy.deepcopy(self._data[name])
        raise self._missing(name)

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

    @property
    def typed(self) -> object | None:
        """The section structured by the pipeline's schema; None without a schema."""
        return self._typed


@attrs.frozen
class _NamedSection(PipelineSection):
    """A pipeline section whose ``name`` (a non-empty string) is required."""

    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {"name": _section_name}
    _expected: ClassVar[str] = "a mapping with a non-empty string 'name'"

    @property
    def name(self) -> str:
        return cast(str, self._data["name"])


@attrs.frozen
class DatasetConfig(_NamedSection):
    """The ``dataset`` section; ``name`` is required."""

    _section: ClassVar[str] = "dataset"


@attrs.frozen
class ArchitectureConfig(_NamedSection):
    """The ``architecture`` section; ``name`` is required."""

    _section: ClassVar[str] = "architecture"


@attrs.frozen
class TrainingConfig(PipelineSection):
    """The ``training`` section; ``seed`` (an integer in ``[0, 2**32)``) is required."""

    _required: ClassVar[Mapping[str, Callable[[object], object]]] = {"seed": _seed}
    _expected: ClassVar[str] = "a mapping with an integer 'seed' in [0, 2**32)"
    _section: ClassVar[str] = "training"

    @property
    def seed(self) -> int:
        return cast(int, self._data["seed"])


# Each section of a recipe by name, to its class: the pipeline's, then the owned ones.
_PIPELINE_CLASSES: dict[str, type[PipelineSection]] = {
    "dataset": DatasetConfig,
    "architecture": ArchitectureConfig,
    "training": TrainingConfig,
}
_OWNED_CLASSES: dict[str, type] = {
    "hardware": HardwareConfig,
    "telemetry": TelemetryConfig,
    "infrastructure": InfrastructureConfig,
}
#: The top-level key naming what ``orchestrator-fsm run RECIPE`` runs.
_ENTRY_KEY = "entry"
_SECTIONS = (*_PIPELINE_CLASSES, *_OWNED_CLASSES, _ENTRY_KEY)


def _entry(value: object) -> str | None:
    if value is None or is_entry_spec(value) or is_script_spec(value):
        return cast("str | None", value)
    raise Invalid(
        "a script path/to/train.py (run as __main__), module:function or path/to/file.py:function",
        value,
    )


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
    entry: str | None = None
    """What ``orchestrator-fsm run`` runs on this recipe when no ``--script`` or
    ``--entry`` is given: a script (a relative path is the recipe file's folder's) or a
    ``module:function``; as written in the recipe."""
    _extra: dict[str, Any] = attrs.field(factory=dict, alias="extra")
    source: Path | None = attrs.field(default=None, eq=False)
    """The recipe file (absolute) this config was read from, if any."""
    _label: str = attrs.field(default=DICT_SOURCE_LABEL, eq=False, alias="label")
    _set_by: dict[str, str] = attrs.field(factory=dict, eq=False, alias="set_by")
    # The config hash, computed on first use: every value above is read-only.
    _hash: str | None = attrs.field(default=None, init=False, eq=False, repr=False)

    @classmethod
    def from_recipe(
        cls,
        path: str | os.PathLike[str],
        overrides: Iterable[str] = (),
        *,
        schema: Schema | None = None,
    ) -> Config:
        """Read, override and validate the YAML recipe at ``path``.

        ``overrides`` are ``"a.b.c=value"`` strings; each value is read as a YAML
        scalar (``7``, ``true``, ``null``, ``'quoted'``; ``[..]``/``{..}`` for lists
        and mappings) and set in the recipe before validation, so it is checked like
        the file. ``schema`` (a pipeline's, see :meth:`with_schema`) types the pipeline
        sections too. Raises :class:`ConfigError` listing every problem found.
        """
        label = os.fspath(path)
        recipe = Path(path)
        document = read_recipe(recipe, label)
        config = _build(
            document, label=label, source=Path(os.path.abspath(recipe)), overrides=overrides
        )
        return config if not schema else config.with_schema(schema)

    def with_schema(self, schema: Schema) -> Config:
        """This config with the pipeline sections ``schema`` names structured by it.

        ``schema`` maps ``dataset``, ``architecture`` or ``training`` to an attrs class
        (see :func:`orchestrator_fsm.pipeline_schema`): each key of the section must be
        a field (or a key the orchestrator reads, such as ``training.seed``), each
        value is checked against the field's type and validator, and absent fields
        take their defaults. Attribute access on the section then gives the typed
        values; the recipe data, ``dump_serialized`` and the config hash are unchanged.
        Raises :class:`ConfigError` listing every problem, unknown keys with the
        closest valid key, each at its dotted path.
        """
        from orchestrator_fsm.config.schema import check_schema, structure_section

        sections: dict[str, Any] = {}
        problems: list[tuple[str, str]] = []
        for name, cls in check_schema(schema).items():
            section: PipelineSection = getattr(self, name)
            typed, found = structure_section(cls, section.params, type(section)._required)
            if found:
                problems += [(_join(name, path), message) for path, message in found]
            else:
                sections[name] = attrs.evolve(section, typed=typed)
        if problems:
            source = None if self.source is None else self._label
            raise config_error(
                self._label, with_origins(problems, self._set_by), source, self._set_by
            )
        return attrs.evolve(self, **sections)

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping[str, Any],
        source: str | os.PathLike[str] | None = None,
        *,
        overrides: Iterable[str] = (),
    ) -> Config:
        """Validate ``mapping`` (shaped like a recipe) with ``overrides`` applied as
        :meth:`from_recipe` applies them; ``mapping`` is not modified.

        ``source`` names where the data came from, in errors and as ``cfg.source``.
        Raises :class:`ConfigError` listing every problem found.
        """
        if source is None:
            return _build(mapping, label=DICT_SOURCE_LABEL, source=None, overrides=overrides)
        return _build(mapping, label=os.fspath(source), source=Path(source), overrides=overrides)

    @property
    def overrides(self) -> tuple[str, ...]:
        """The overrides as given that set this config's values, in the order applied
        (one that was replaced by a later override of the same key is not kept)."""
        return tuple(dict.fromkeys(self._set_by.values()))

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
        for name in _OWNED_CLASSES:
            data[name] = attrs.asdict(getattr(self, name), value_serializer=_plain_path)
        if self.entry is not None:
            data[_ENTRY_KEY] = self.entry
        return data

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Atomically write :meth:`dump_serialized` as YAML to ``path``.

        The file loads back (:meth:`from_recipe`) to an equal config. Its directory
        must exist. Secrets are written as they are.
        """
        atomic_write_text(Path(path), dump_yaml(self.dump_serialized()))

    def config_hash(self) -> str:
        """SHA-256 (hex) of :meth:`dump_serialized` as canonical JSON; stable across runs."""
        if self._hash is not None:
            return self._hash
        # json.dumps escapes every non-ASCII character by default: the text is ASCII.
        canonical = json.dumps(self.dump_serialized(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha256(canonical.encode("ascii")).hexdigest()
        object.__setattr__(self, "_hash", digest)
        return digest


def _plain_path(_instance: object, _field: object, value: Any) -> Any:
    # The owned sections hold plain data but for paths, written as strings. (attrs'
    # asdict, not the converter: that generates code per class on first use, 3 ms.)
    return str(value) if isinstance(value, Path) else value


def _warn_only_requires_reproducible(section: Mapping[Any, Any]) -> list[tuple[str, str]]:
    reproducible = section.get("reproducible", False)
    if section.get("deterministic_warn_only") is True and reproducible is False:
        problem = (
            "deterministic_warn_only: true requires reproducible: true (warn-only mode "
            "relaxes the deterministic algorithms that only reproducible mode enables), "
            "got reproducible: false"
        )
        return [("deterministic_warn_only", problem)]
    return []


#: The rules relating an owned section's fields, checked on the raw section even when
#: single fields are bad, so that one ConfigError reports everything.
_SECTION_RULES: dict[type, tuple[Callable[[Mapping[Any, Any]], list[tuple[str, str]]], ...]] = {
    HardwareConfig: (_warn_only_requires_reproducible,),
}


def _pipeline_section(cls: type[PipelineSection], value: object) -> PipelineSection:
    if not isinstance(value, Mapping):
        raise Invalid(cls._expected, value)
    problems: list[tuple[str, str]] = []
    for key, check in cls._required.items():
        try:
            check(value.get(key, MISSING))
        except Exception as exc:
            problems += problems_at(key, exc)
    if problems:
        raise Problems(problems)
    return cls(dict(value))


def _pipeline_extra(document: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's top-level keys that are not sections: the pipeline's, verbatim."""
    return {key: value for key, value in document.items() if key not in _SECTIONS}


def _structure(document: Mapping[str, Any]) -> tuple[Config | None, list[tuple[str, str]]]:
    """The config of ``document``, or None; and every problem, at its dotted path."""
    sections: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    # An absent required section is checked as MISSING, so that its problem says
    # "expected ..., got nothing"; an absent owned section takes its defaults.
    for name, pipeline_cls in _PIPELINE_CLASSES.items():
        try:
            sections[name] = _pipeline_section(pipeline_cls, document.get(name, MISSING))
        except Exception as exc:
            problems += problems_at(name, exc)
    for name, owned_cls in _OWNED_CLASSES.items():
        if name in document:
            try:
                sections[name] = _owned_section(owned_cls, document[name])
            except Exception as exc:
                problems += problems_at(name, exc)
    if document.get(_ENTRY_KEY) is not None:
        try:
            sections[_ENTRY_KEY] = _entry(document[_ENTRY_KEY])
        except Exception as exc:
            problems += problems_at(_ENTRY_KEY, exc)
    if problems:
        return None, problems
    return Config(**sections, extra=_pipeline_extra(document)), problems


def _build(
    document: object, *, label: str, source: Path | None, overrides: Iterable[str]
) -> Config:
    error_source = None if source is None else label
    if not isinstance(document, Mapping):
        expected = "a mapping of recipe sections (dataset, architecture, training, ...)"
        raise config_error(label, [("", str(Invalid(expected, document)))], error_source)
    data, problems = plain_data(document)
    if not isinstance(data, dict):  # too big to look at any further
        raise config_error(label, problems, error_source)
    set_by, override_problems = apply_overrides(data, overrides)
    problems += override_problems
    problems += misspelt_sections(data, _SECTIONS)
    config, structure_problems = _structure(data)
    problems += structure_problems
    if problems or config is None:
        raise config_error(label, with_origins(problems, set_by), error_source, set_by)
    return attrs.evolve(
        config,
        source=source,
        label=label,
        set_by=set_by,
        dataset=attrs.evolve(config.dataset, label=label),
        architecture=attrs.evolve(config.architecture, label=label),
        training=attrs.evolve(config.training, label=label),
    )


def _join(section: str, path: str) -> str:
    return f"{section}.{path}" if path else section
