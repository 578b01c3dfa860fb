"""What differs between two rerun bundles, as typed items.

:func:`bundle_drift` compares two bundles section by section and returns one
:class:`Drift` per difference: ``config`` (dotted keys), ``overrides``, ``seeds``,
``packages`` (added, removed, changed), ``git`` (commit, branch, dirty, the diff),
``entry`` (the spec, its file's content), ``recipe`` (its path, or the file changed),
``python``, ``platform``, ``torch`` (the build), ``hardware``, ``env`` (allow-listed
variables) and ``libraries`` (the native libraries loaded). Items of kind
:data:`NOTE_KINDS` are told but are no drift: they do not change what a rerun runs
(``rerun`` reads the saved config, not the recipe file; which libraries load is only
known after the run).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

__all__ = ["NOTE_KINDS", "Drift", "bundle_drift", "flatten", "is_drift"]

NOTE_KINDS: Final = frozenset({"recipe", "libraries"})


@attrs.frozen
class Drift:
    """One difference: its kind (the bundle's section), the key and both values
    (``None`` where one side has no such key)."""

    kind: str
    key: str
    before: Any
    after: Any

    @property
    def change(self) -> str:
        """``added``, ``removed`` or ``changed``."""
        if self.before is None:
            return "added"
        if self.after is None:
            return "removed"
        return "changed"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "change": self.change,
            "before": self.before,
            "after": self.after,
        }


def is_drift(item: Drift) -> bool:
    """Whether ``item`` changes what runs (not a note, see :data:`NOTE_KINDS`)."""
    return item.kind not in NOTE_KINDS


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``data`` as ``{dotted key: leaf value}`` (lists are leaves)."""
    if isinstance(data, Mapping) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: data} if prefix else {}


def _mapping_drift(kind: str, before: Any, after: Any) -> list[Drift]:
    a = flatten(before if isinstance(before, Mapping) else {})
    b = flatten(after if isinstance(after, Mapping) else {})
    return [
        Drift(kind, key, a.get(key), b.get(key))
        for key in sorted(a.keys() | b.keys())
        if a.get(key) != b.get(key)
    ]


def _section(bundle: Mapping[str, Any], *names: str) -> Any:
    value: Any = bundle
    for name in names:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def _by_key(overrides: Iterable[str]) -> dict[str, str]:
    return {text.partition("=")[0].strip(): text for text in overrides}


def _overrides_drift(before: Iterable[str], after: Iterable[str]) -> list[Drift]:
    # By the key each sets: the same overrides given in another order set the same.
    a, b = _by_key(before), _by_key(after)
    return [
        Drift("overrides", key, a.get(key), b.get(key))
        for key in [*a, *(key for key in b if key not in a)]
        if a.get(key) != b.get(key)
    ]


def _git_drift(before: Any, after: Any) -> list[Drift]:
    if before is None and after is None:
        return []
    if before is None or after is None:
        shown = ("not a git checkout", "a git checkout")
        return [Drift("git", "checkout", *(shown if before is None else shown[::-1]))]
    keys = ("commit", "branch", "dirty", "diff_sha256", "diff_truncated")
    return [
        Drift("git", key, before.get(key), after.get(key))
        for key in keys
        if before.get(key) != after.get(key)
    ]


def _entry_drift(before: Any, after: Any) -> list[Drift]:
    a = before if isinstance(before, Mapping) else {}
    b = after if isinstance(after, Mapping) else {}
    items = [
        Drift("entry", key, a.get(key), b.get(key))
        for key in ("spec", "path", "sha256", "argv")
        if a.get(key) != b.get(key)
    ]
    return items


def _library_drift(before: Any, after: Any) -> list[Drift]:
    if before is None or after is None:
        return []
    a = {item["soname"]: item["path"] for item in before if isinstance(item, Mapping)}
    b = {item["soname"]: item["path"] for item in after if isinstance(item, Mapping)}
    return [
        Drift("libraries", name, a.get(name), b.get(name))
        for name in sorted(a.keys() | b.keys())
        if a.get(name) != b.get(name)
    ]


def bundle_drift(
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    *,
    config_before: Any = None,
    config_after: Any = None,
) -> list[Drift]:
    """Every difference between bundle ``before`` and bundle ``after``, in section order.

    ``config_before``/``config_after`` are the saved resolved configs (the bundles name
    their file); the config is compared key by key when both are given."""
    items: list[Drift] = []
    if config_before is not None or config_after is not None:
        items += _mapping_drift("config", config_before, config_after)
    items += _overrides_drift(before.get("overrides") or (), after.get("overrides") or ())
    items += _mapping_drift("seeds", before.get("seeds"), after.get("seeds"))
    items += _mapping_drift("packages", before.get("packages"), after.get("packages"))
    items += _git_drift(before.get("git"), after.get("git"))
    items += _entry_drift(before.get("entry"), after.get("entry"))
    recipe_a, recipe_b = before.get("recipe") or {}, after.get("recipe") or {}
    for key in ("path", "sha256"):
        if recipe_a.get(key) != recipe_b.get(key):
            items.append(Drift("recipe", key, recipe_a.get(key), recipe_b.get(key)))
    env_a, env_b = before.get("environment") or {}, after.get("environment") or {}
    for key in ("python", "python_implementation", "platform"):
        if env_a.get(key) != env_b.get(key):
            items.append(Drift("python", key, env_a.get(key), env_b.get(key)))
    items += _mapping_drift("torch", env_a.get("torch"), env_b.get("torch"))
    items += _mapping_drift("hardware", env_a.get("hardware"), env_b.get("hardware"))
    items += _mapping_drift("env", env_a.get("env"), env_b.get("env"))
    items += _library_drift(before.get("loaded_libraries"), after.get("loaded_libraries"))
    return items
