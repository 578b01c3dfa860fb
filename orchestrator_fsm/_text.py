"""Words for people: counts with the right plural."""

from __future__ import annotations

__all__ = ["counted"]


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """``1 epoch``, ``3 epochs``, ``0 loader workers``: ``plural`` defaults to ``noun + "s"``
    (for a phrase, the last word takes the ``s``)."""
    return f"{count} {noun if count == 1 else plural or noun + 's'}"
