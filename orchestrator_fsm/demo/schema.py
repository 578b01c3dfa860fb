"""The demo pipeline's schema: the keys it reads from its recipe sections, typed.

Kept apart from :mod:`orchestrator_fsm.demo.pipeline` so that checking a recipe
against it needs no torch. Each class is one section; a key the demo does not read is
an error (with the closest valid key), and a value out of range is one too, before
any run directory exists.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs

__all__ = ["DEMO_SCHEMA", "DemoArchitecture", "DemoDataset", "DemoTraining"]


def _check(test: Callable[[Any], bool], expected: str) -> Callable[[object, object, Any], None]:
    def validate(_instance: object, _attribute: object, value: Any) -> None:
        if value is not None and not test(value):
            raise ValueError(f"expected {expected}, got {value!r}")

    return validate


_AT_LEAST_ONE = _check(lambda value: value >= 1, "an integer of at least 1")


@attrs.frozen
class DemoDataset:
    """``dataset``: the synthetic shapes (``name`` is the orchestrator's)."""

    num_samples: int = attrs.field(
        default=2048, validator=_check(lambda value: value >= 2, "at least 2 images")
    )
    """Images generated, training and validation together."""
    image_size: int = attrs.field(
        default=16,
        validator=_check(
            lambda value: value >= 8 and value % 4 == 0,
            "a multiple of 4 of at least 8 (two 2x poolings)",
        ),
    )
    """Side of an image in pixels."""
    noise: float = attrs.field(
        default=0.2, validator=_check(lambda value: value >= 0, "a number >= 0")
    )
    """Standard deviation of the Gaussian pixel noise."""
    val_fraction: float = attrs.field(
        default=0.25,
        validator=_check(lambda value: 0 < value < 1, "a number between 0 and 1 (exclusive)"),
    )
    """Share of the images held out for validation."""


@attrs.frozen
class DemoArchitecture:
    """``architecture``: the mini CNN (``name`` is the orchestrator's)."""

    channels: int = attrs.field(default=8, validator=_AT_LEAST_ONE)
    """Channels of the first convolution (doubled in the second)."""


@attrs.frozen
class DemoTraining:
    """``training``: the optimisation (``seed`` is the orchestrator's)."""

    epochs: int = attrs.field(default=3, validator=_AT_LEAST_ONE)
    """Passes over the training images."""
    batch_size: int = attrs.field(default=32, validator=_AT_LEAST_ONE)
    """Images per optimisation step."""
    learning_rate: float | None = attrs.field(
        default=None, validator=_check(lambda value: value > 0, "a number > 0")
    )
    """Adam's step size (default 0.01, or ``lr``)."""
    lr: float | None = attrs.field(
        default=None, validator=_check(lambda value: value > 0, "a number > 0")
    )
    """The same as ``learning_rate``, which wins when both are given."""

    @property
    def effective_learning_rate(self) -> float:
        """``learning_rate``, else ``lr``, else 0.01."""
        for value in (self.learning_rate, self.lr):
            if value is not None:
                return value
        return 0.01


#: What :func:`orchestrator_fsm.demo.pipeline.train` declares with ``pipeline_schema``.
DEMO_SCHEMA: Final = {
    "dataset": DemoDataset,
    "architecture": DemoArchitecture,
    "training": DemoTraining,
}
