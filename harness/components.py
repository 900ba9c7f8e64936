"""A component the harness needs (Java, PostgreSQL, Redis) is missing.

Tests turn :class:`ComponentMissing` into a skip, or a failure with ``CI=true`` (see
``tests/conftest.py``); a benchmark just stops with the message.
"""

from __future__ import annotations


class ComponentMissing(RuntimeError):
    """A real component the harness starts or talks to is not available here."""


def require(available: bool, what: str) -> None:
    if not available:
        raise ComponentMissing(f"{what} is not available")
