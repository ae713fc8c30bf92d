"""The trials table, in Markdown (select_trial's summary, evaluate's summary) and HTML (evaluate's report):
each trial's overrides, validation accuracy and macro-F1, training samples/s and GPU time, the winner marked."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping

from petqlora.evaluation.formats import format_f1, format_percent, format_seconds
from petqlora.trials.select import TrialResult

__all__ = ["trials_html", "trials_markdown", "trials_rows"]

HEADERS = ("Trial", "Overrides", "Validation accuracy", "Macro-F1", "Samples/s", "GPU time", "")
NOTE = ("Each trial trained on the training split and was scored on the validation split; the winner (best "
        "validation accuracy, a tie to the cheaper trial) alone was evaluated on the test split above. GPU time: "
        "the training job's wall time and the validation scoring (the CPU's on a local run).")


def trials_rows(trials: list[Mapping], winner: int) -> list[tuple[str, ...]]:
    """One row of cells per trial (the dicts select_trial writes), the winner marked."""
    rows = []
    for values in trials:
        r = TrialResult.from_dict(values)
        rows.append((str(r.index), json.dumps(r.overrides, sort_keys=True) if r.overrides else "(run's own)",
                     format_percent(r.validation_accuracy),
                     "n/a" if r.validation_macro_f1 is None else format_f1(r.validation_macro_f1),
                     "n/a" if r.samples_per_s is None else f"{r.samples_per_s:.2f}",
                     format_seconds(r.gpu_seconds), "winner" if r.index == winner else ""))
    return rows


def trials_markdown(trials: list[Mapping], winner: int) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    align = "| --- | --- | " + " | ".join("---:" for _ in HEADERS[2:-1]) + " | --- |"
    lines = ["| " + " | ".join(HEADERS) + " |", align]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in trials_rows(trials, winner)]
    return "\n".join(["### Trials (validation split)", "", *lines, "", NOTE]) + "\n"


def trials_html(trials: list[Mapping], winner: int) -> str:
    head = "".join(f'<th class="{"text" if i < 2 else ""}">{html.escape(h)}</th>' for i, h in enumerate(HEADERS))
    body = "".join("<tr>" + "".join(f'<td class="{"text" if i < 2 else ("best" if row[-1] else "")}">'
                                    f"{html.escape(c)}</td>" for i, c in enumerate(row)) + "</tr>"
                   for row in trials_rows(trials, winner))
    return (f'<h2>Trials (validation split)</h2><table class="data"><thead><tr>{head}</tr></thead><tbody>{body}'
            f'</tbody></table>\n<p class="muted">{html.escape(NOTE)}</p>')
