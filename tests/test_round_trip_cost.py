"""The cheaper round trip writes the same bytes: each shortcut against the plain way."""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_fsm import RootOrchestrator
from orchestrator_fsm._fs import json_text
from orchestrator_fsm.layout import bundle_file
from orchestrator_fsm.phases.bundle import _completed

_TRICKY = '\n  "loaded_libraries": null'
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(alphabet=st.sampled_from(["a", " ", "\n", '"', "é", "\\"]))
    | st.sampled_from([_TRICKY, f"x{_TRICKY}", "loaded_libraries"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["a", "loaded_libraries", "z", _TRICKY]), inner, max_size=3
        )
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(
    bundle=st.dictionaries(st.sampled_from(["a", "b", "zz", _TRICKY]), _json_values, max_size=4),
    libraries=st.none() | st.lists(st.fixed_dictionaries({"path": st.text(), "soname": st.text()})),
)
def test_the_completed_bundle_is_what_encoding_it_whole_gives(
    bundle: dict[str, Any], libraries: list[dict[str, str]] | None
) -> None:
    bundle = {**bundle, "loaded_libraries": None}
    completed = _completed(json_text(bundle), libraries)
    assert completed == json_text({**bundle, "loaded_libraries": libraries})


def test_a_bundle_without_the_key_is_not_completed_by_text() -> None:
    assert _completed(json_text({"a": {"loaded_libraries": None}}), []) is None


def test_the_run_bundle_is_completed_as_a_whole_encoding_would_write_it(
    make_config: Any,
) -> None:
    with RootOrchestrator(make_config()) as orch:
        assert orch.paths is not None
    text = bundle_file(orch.paths.root).read_text(encoding="utf-8")
    bundle = json.loads(text)
    assert bundle["loaded_libraries"] is None or isinstance(bundle["loaded_libraries"], list)
    if Path("/proc/self/maps").exists():
        assert bundle["loaded_libraries"]
    assert text == json_text(bundle)


class _Level(enum.IntEnum):
    LOW = 1


class _Name(str):
    pass


class _Ratio(float):
    pass


class _Items(list[Any]):
    pass


_anything = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text()
    | st.sampled_from(
        [
            _Level.LOW,
            _Name("x"),
            _Ratio(0.5),
            _Ratio("nan"),
            Path("/a b"),
            datetime(2026, 1, 2, tzinfo=timezone.utc),
            b"x",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.lists(inner, max_size=2).map(_Items)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=2).map(OrderedDict)
        | st.dictionaries(
            st.integers() | st.none() | st.booleans() | st.floats(), inner, max_size=2
        )
    ),
    max_leaves=15,
)


def _plain(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"


@settings(max_examples=500, deadline=None)
@given(payload=_anything)
def test_json_text_is_the_text_json_dumps_gives(payload: Any) -> None:
    try:
        expected = _plain(payload)
    except (TypeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            json_text(payload)
        return
    assert json_text(payload) == expected


def test_json_text_special_cases() -> None:
    for payload in ({}, [], (), {"a": {}}, [[]], math.nan, -math.inf, {"b": 1, "a": [1.5, None]}):
        assert json_text(payload) == _plain(payload)
    with pytest.raises(TypeError):
        json_text({1: "a", "b": 2})  # keys that cannot be sorted together, as json says
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(ValueError, match="Circular"):
        json_text(loop)
