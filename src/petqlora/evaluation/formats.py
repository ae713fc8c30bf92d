"""The numbers' formats shared by every table (console, Markdown, HTML, progress lines, the trials table), so
they all show the same figures."""

from __future__ import annotations


def format_seconds(seconds: float) -> str:
    """45.2 s, 12m 05s, 2h 03m: short enough for a table column, exact enough to compare runs."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    if total < 3600:
        return f"{total // 60}m {total % 60:02d}s"
    return f"{total // 3600}h {(total % 3600) // 60:02d}m"


def format_percent(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.1f}%"


def format_f1(value: float) -> str:
    return f"{value:.3f}"
