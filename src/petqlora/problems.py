"""The one validation helper: collect every problem with a set of inputs, then raise once, naming each
field, its value, the rule it breaks and the fix."""

from __future__ import annotations

from typing import Any


class Problems:
    """``p = Problems("train config")``; ``p.add(field, value, rule, fix)`` or ``p.check(ok, ...)`` for each
    rule; ``p.raise_if_any()`` raises one ``error`` listing them all (ValueError unless given)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.items: list[str] = []

    def add(self, field: str, value: Any, rule: str, fix: str | None = None) -> None:
        self.items.append(f"{field}={value!r}: {rule}" + (f"; fix: {fix}" if fix else ""))

    def check(self, ok: bool, field: str, value: Any, rule: str, fix: str | None = None) -> bool:
        """Adds the problem when ``ok`` is false; returns ``ok`` so dependent checks can be skipped."""
        if not ok:
            self.add(field, value, rule, fix)
        return bool(ok)

    def __bool__(self) -> bool:
        return bool(self.items)

    def message(self) -> str:
        return f"invalid {self.what}:\n" + "\n".join(f"  - {p}" for p in self.items)

    def raise_if_any(self, error: type[Exception] = ValueError) -> None:
        """The error carries the items as ``.problems``, so a check of a larger whole can fold them into its own."""
        if self.items:
            exc = error(self.message())
            exc.problems = tuple(self.items)
            raise exc
