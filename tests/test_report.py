"""report: console table, Markdown summary, self-contained HTML report and loss-curve PNG."""

from __future__ import annotations

import html
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from petqlora.evaluation.metrics import classification_result
from petqlora.evaluation.report_confusion import (COLUMN_LABEL_CHARS, OFF_MIN_TINT, OFF_POWER, column_labels,
                                                   tint_level)
from petqlora.evaluation.report_html import html_report
from petqlora.evaluation.report_table import (ModelRow, decision_sentence, format_seconds, markdown_summary,
                                              results_table, run_details)
from petqlora.train.loss_curve import loss_curve_png

# A class name with every HTML special character, to prove escaping.
NASTY = 'Abyssinian <b>"cat"</b> & co'
CLASSES = [NASTY, "beagle", "pug"]

ROWS = [
    ModelRow("Gemma 3 27B (zero-shot)", 0.6123, 0.598, 54.3, 725.0),
    ModelRow("Gemma 4 31B (zero-shot)", 0.7012, 0.6884, 61.04, 45.25, images_per_s=4.4),
    ModelRow("Gemma 4 + QLoRA", 0.875, 0.8612, 22.7, 7384.0, images_per_s=5.5, top3_accuracy=0.95),
]


def _finetuned():
    # 8 examples; 6 right: accuracy 75%, one "unparseable" answer that lands in no column.
    y_true = [NASTY, NASTY, NASTY, "beagle", "beagle", "beagle", "pug", "pug"]
    y_pred = [NASTY, NASTY, "pug", "beagle", "beagle", "beagle", "pug", "unparseable"]
    scores = np.eye(3)[[0, 0, 2, 1, 1, 1, 2, 0]]
    return classification_result(y_true, y_pred, CLASSES, scores)


def _report(**overrides) -> str:
    kwargs = dict(
        rows=ROWS,
        classes=CLASSES,
        finetuned=_finetuned(),
        loss_curve=[(10, 2.5), (20, 1.25), (30, 0.625)],
        title="Pets <run 7> & friends",
        registered=True,
        reason="accuracy 87.5% > 70.1% + margin & <ok>",
        extra={"base model": "google/gemma-4-31b-it", "lora": {"r": 16}, "lr": 0.0002},
    )
    kwargs.update(overrides)
    return html_report(**kwargs)


class _Collector(HTMLParser):
    """Collects tags, attributes and text; a parse that ends with open tags means broken nesting."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []
        self.stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs
        if tag not in {"meta", "br", "rect", "line", "polyline"}:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += attrs

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


# --- console table ----------------------------------------------------------------------------------------


def test_results_table_contents_and_alignment() -> None:
    table = results_table(ROWS)
    lines = table.rstrip("\n").split("\n")
    assert lines[0].split(" | ") == [
        "Approach               ",
        "Accuracy",
        "Macro-F1",
        "Top-3",
        " Peak memory",
        "   Time",
        "Images/s",
    ]
    assert set(lines[1]) <= {"-", "+"}
    assert lines[2] == (
        "Gemma 3 27B (zero-shot) |    61.2% |    0.598 |   n/a | 54.3 GiB GPU | 12m 05s |      n/a"
    )
    assert lines[3] == (
        "Gemma 4 31B (zero-shot) |    70.1% |    0.688 |   n/a | 61.0 GiB GPU |  45.2 s |     4.40"
    )
    assert lines[4] == (
        "Gemma 4 + QLoRA         |    87.5% |    0.861 | 95.0% | 22.7 GiB GPU |  2h 03m |     5.50"
    )
    # Every line has the separators at the same columns.
    bars = [[m.start() for m in re.finditer(r"\|", line)] for line in lines[:1] + lines[2:]]
    pluses = [m.start() for m in re.finditer(r"\+", lines[1])]
    assert all(b == pluses for b in bars)


def test_results_table_minimal_columns_and_cpu_memory() -> None:
    table = results_table([ModelRow("tiny", 0.5, 0.25, 1.234, 3.0, memory_kind="CPU RSS")])
    assert table.splitlines() == [
        "Approach | Accuracy | Macro-F1 |     Peak memory |  Time",
        "---------+----------+----------+-----------------+------",
        "tiny     |    50.0% |    0.250 | 1.2 GiB CPU RSS | 3.0 s",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0.0 s"), (59.94, "59.9 s"), (60, "1m 00s"), (725, "12m 05s"), (3600, "1h 00m")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(accuracy=87.5), r"ModelRow.accuracy .* \[0, 1\]"),
        (dict(macro_f1=float("nan")), "ModelRow.macro_f1"),
        (dict(top3_accuracy=1.5), "ModelRow.top3_accuracy"),
        (dict(peak_memory_gib=-1.0), "ModelRow.peak_memory_gib"),
        (dict(seconds=float("inf")), "ModelRow.seconds"),
        (dict(images_per_s=0.0), "ModelRow.images_per_s"),
        (dict(memory_kind="TPU"), "ModelRow.memory_kind"),
        (dict(approach=" "), "ModelRow.approach"),
        (dict(accuracy=True), "ModelRow.accuracy"),
    ],
)
def test_model_row_validation(kwargs: dict, match: str) -> None:
    base = dict(approach="m", accuracy=0.5, macro_f1=0.5, peak_memory_gib=1.0, seconds=1.0)
    with pytest.raises(ValueError, match=match):
        ModelRow(**{**base, **kwargs})


def test_results_table_rejects_empty_rows() -> None:
    with pytest.raises(ValueError, match="rows must be a non-empty list"):
        results_table([])
    with pytest.raises(ValueError, match="rows must hold ModelRow"):
        results_table([{"approach": "x"}])


# --- Markdown ---------------------------------------------------------------------------------------------


def test_markdown_summary_registered() -> None:
    md = markdown_summary(
        ROWS, registered=True, model_version="3", reason="beats *both* baselines", dataset_hash="abc1"
    )
    lines = md.splitlines()
    assert lines[2] == "| Approach | Accuracy | Macro-F1 | Top-3 | Peak memory | Time | Images/s |"
    assert lines[3] == "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    assert lines[6] == "| Gemma 4 + QLoRA | 87.5% | 0.861 | 95.0% | 22.7 GiB GPU | 2h 03m | 5.50 |"
    assert "**Decision:** Registered as model version `3`: beats \\*both\\* baselines." in md
    assert "Dataset hash: `abc1`" in md


def test_markdown_summary_of_a_winner_before_registration_names_no_version() -> None:
    reason = "registered: fine-tuned accuracy 0.800 beats gemma4_baseline 0.600 by 0.200"
    md = markdown_summary(ROWS, registered=True, model_version=None, reason=reason,
                          details={"run id": "run_7", "LoRA": "rank 16, alpha 16, 410 target modules"})
    assert ("**Decision:** Registration pending (the register\\_model step creates the version): fine-tuned "
            "accuracy 0.800 beats gemma4\\_baseline 0.600 by 0.200.") in md
    assert "assigned by" not in md and "`" not in md.split("**Decision:**")[1].split("\n")[0]
    assert md.rstrip("\n").splitlines()[-3:] == ["", "- run id: run\\_7", "- LoRA: rank 16, alpha 16, 410 target modules"]


def test_markdown_summary_shows_the_version_verbatim() -> None:
    md = markdown_summary(ROWS, registered=True, model_version="pets_model@12", reason="registered: wins")
    assert "**Decision:** Registered as model version `pets_model@12`: wins." in md


def test_markdown_summary_not_registered_escapes_pipes() -> None:
    rows = [ModelRow("a|b", 0.1, 0.1, 1.0, 1.0)]
    md = markdown_summary(rows, registered=False, model_version=None, reason="lost by 2 points")
    assert "| a\\|b | 10.0% |" in md
    assert "**Decision:** Not registered: lost by 2 points." in md
    assert "Dataset hash" not in md


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(registered=True, model_version="a`b"), "model_version is 'a`b'; pass the registry version"),
        (dict(registered=True, model_version=" "), "model_version is ' '"),
        (dict(registered=False, model_version="2"), "registered=False; pass None"),
        (dict(registered="yes", model_version=None), "registered must be True or False"),
        (dict(registered=False, model_version=None, reason=""), "reason must be a non-empty"),
        (dict(registered=False, model_version=None, dataset_hash="a`b"), "dataset_hash"),
    ],
)
def test_markdown_summary_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        markdown_summary(ROWS, **{"reason": "r", **kwargs})


# --- HTML -------------------------------------------------------------------------------------------------


def test_html_parses_and_is_self_contained() -> None:
    page = _report()
    parser = _Collector()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    assert page.startswith("<!DOCTYPE html>")
    for tag in ("script", "link", "img", "iframe", "object", "embed"):
        assert tag not in parser.tags, f"<{tag}> would load or run something in the sandboxed iframe"
    for name, value in parser.attrs:
        assert name not in {"src", "href"}, f"{name}={value!r} refers outside the file"
    assert not re.search(r"https?://|url\(|@import", page.replace("google/gemma-4-31b-it", ""))
    assert {"svg", "polyline"} <= set(parser.tags)


def test_html_escapes_every_class_name_title_and_reason() -> None:
    page = _report()
    escaped = html.escape(NASTY, quote=True)
    assert NASTY not in page  # never raw
    # Row label, column label, per-class row, and the confusion lists all name it.
    assert page.count(escaped) >= 3
    for name in CLASSES:
        assert html.escape(name) in page
    assert "Pets &lt;run 7&gt; &amp; friends" in page
    assert "&amp; &lt;ok&gt;" in page
    text = "".join(_parse(page).text)
    assert NASTY in text  # and the browser shows the original name


def _parse(page: str) -> _Collector:
    p = _Collector()
    p.feed(page)
    return p


def test_html_numbers_appear() -> None:
    page = _report()
    numbers = ("61.2%", "70.1%", "87.5%", "0.598", "0.688", "0.861", "95.0%", "22.7 GiB GPU", "2h 03m", "5.50")
    for number in numbers:
        assert number in page, number
    # Fine-tuned: 6/8 right; per-class: NASTY P=2/2 R=2/3, beagle P=R=1, pug P=1/2 R=1/2 (one unparseable).
    assert "8 examples, accuracy 75.0%" in page
    for value in ("0.667", "0.800", "1.000", "0.500"):
        assert f"<td>{value}</td>" in page, value
    assert "(not a class)" in page  # the unparseable answer shows as its own column
    assert "Registration pending (the register_model step creates the version):</strong>" in page
    assert "google/gemma-4-31b-it" in page and "{&quot;r&quot;: 16}" in page
    assert "loss 2.5 at step 10" in page and "0.625 at step 30" in page
    assert "no validation loss was recorded" in page and 'class="validation"' not in page


def test_html_confusion_cells_carry_counts_and_row_normalised_shades() -> None:
    page = _report()
    rows = re.findall(r"<tr><th class=\"row\">(.*?)</tr>", page, flags=re.S)
    assert len(rows) == 3
    counts = [re.findall(r"<td[^>]*>(\d*)</td>", r) for r in rows]
    # 3 class columns, "(not a class)", support; a zero is a blank cell.
    assert counts == [["2", "", "1", "", "3"], ["", "3", "", "", "3"], ["", "", "1", "1", "2"]]
    # Full-row diagonal (beagle 3/3) is the darkest blue; an off-diagonal 1/3 is tinted red, its count bold.
    assert 'style="background:#1a5fb4;color:#fff"' in rows[1]
    off = rows[0].split("</td>")[2]
    assert 'class="off"' in off and re.search(r"background:#(..)(..)(..)", off)
    r, g, b = (int(x, 16) for x in re.search(r"background:#(..)(..)(..)", off).groups())
    assert r > g + 40 and r > b + 40  # clearly red, not a faint pink


def test_html_not_registered_and_no_loss_curve() -> None:
    page = _report(registered=False, reason="not registered: did not beat Gemma 4", loss_curve=None, extra=None)
    assert '<div class="decision no"><strong>Not registered:</strong> did not beat Gemma 4.</div>' in page
    assert "No training loss was recorded" in page and "<svg" not in page
    assert "Run details" not in page
    assert "No training loss was recorded" in _report(loss_curve=[])


# Oxford-IIIT Pet's 37 breeds, as its file names spell them: the report's real case.
BREEDS = ["Abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "Bengal",
          "Birman", "Bombay", "boxer", "British_Shorthair", "chihuahua", "Egyptian_Mau", "english_cocker_spaniel",
          "english_setter", "german_shorthaired", "great_pyrenees", "havanese", "japanese_chin", "keeshond",
          "leonberger", "Maine_Coon", "miniature_pinscher", "newfoundland", "Persian", "pomeranian", "pug",
          "Ragdoll", "Russian_Blue", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "Siamese",
          "Sphynx", "staffordshire_bull_terrier", "wheaten_terrier", "yorkshire_terrier"]


def test_html_thirty_seven_classes_stay_legible() -> None:
    rng = np.random.default_rng(0)
    y_true = [c for c in BREEDS for _ in range(5)]
    y_pred = [c if rng.random() < 0.8 else BREEDS[int(rng.integers(37))] for c in y_true]
    result = classification_result(y_true, y_pred, BREEDS)
    page = _report(classes=BREEDS, finetuned=result)
    parser = _parse(page)
    parser.close()
    assert parser.stack == []
    # Every class is a row label, a column (whole name as the header's tooltip) and a per-class row.
    rows = re.findall(r'<tr><th class="row">(.*?)</th>(.*?)</tr>', page, flags=re.S)
    assert [name for name, _ in rows] == BREEDS
    titles = re.findall(r'<th class="col" title="([^"]*)"><div>([^<]*)</div>', page)
    assert [t for t, _ in titles] == BREEDS
    for full, shown in titles:  # headers past 18 characters are cut, with an ellipsis; the rest whole
        assert shown == full if len(full) <= COLUMN_LABEL_CHARS else (
            len(shown) <= COLUMN_LABEL_CHARS and shown.endswith("\u2026") and full.startswith(shown[:-1]))
    assert sum(shown != full for full, shown in titles) == 3  # the 22-26 character breeds
    for name in BREEDS:
        assert f'<tr><td class="text">{name}</td>' in page
    # 37 cells per row, then the support; zeros blank; counts add up to the confusion matrix.
    for (_, cells), counts in zip(rows, result.confusion_matrix):
        values = re.findall(r"<td[^>]*>(\d*)</td>", cells)
        assert len(values) == 37 + 1 and values[-1] == "5"
        assert [int(v) if v else 0 for v in values[:-1]] == counts
    # Sizes chosen for 1280 px: 24 px cells, the row labels sticky in a sideways-scrolling box.
    assert "table.cm td{width:24px;min-width:24px;height:22px" in page
    assert re.search(r"table\.cm th\.row\{[^}]*position:sticky;left:0", page)
    assert '<div class="scroll"><table class="cm">' in page and ".scroll{overflow-x:auto" in page
    # The top confusions: a table of at most 8, most frequent first.
    confusions = re.search(r'<table class="data confusions">.*?</table>', page, flags=re.S).group(0)
    counts = [int(c) for c in re.findall(r"</td><td>(\d+)</td><td>\d+%</td></tr>", confusions)]
    assert 0 < len(counts) <= 8 and counts == sorted(counts, reverse=True)


def test_one_error_is_visible_and_four_are_visibly_more() -> None:
    one, four = (tint_level(share, OFF_MIN_TINT, OFF_POWER) for share in (1 / 20, 4 / 20))
    assert one >= 0.35 and four - one > 0.1  # a linear shade gave 0.38 and 0.48: the same pink to the eye


def test_column_labels_are_shortened_unless_that_makes_two_alike() -> None:
    assert column_labels(["pug", "staffordshire_bull_terrier"]) == ["pug", "staffordshire_bul\u2026"]
    alike = ["american_pit_bull_terrier_a", "american_pit_bull_terrier_b"]
    assert column_labels(alike) == alike


def test_lowest_f1_names_only_classes_below_one() -> None:
    y = ["beagle", "beagle", "pug", "pug", NASTY]
    page = _report(finetuned=classification_result(y, ["beagle", "beagle", "pug", "beagle", NASTY], CLASSES))
    lowest = re.search(r"<strong>Lowest F1:</strong>(.*?)</p>", page).group(1)
    assert "beagle (0.800)" in lowest and "pug (0.667)" in lowest and "1.000" not in lowest
    perfect = _report(finetuned=classification_result(y, y, CLASSES))
    assert "<strong>Lowest F1:</strong> none below 1.000" in perfect


@pytest.mark.parametrize(("registered", "version", "sentence"), [
    (True, "7", "Registered as model version 7: fine-tuned accuracy 0.800 beats gemma4_baseline 0.600 by 0.200."),
    (True, None, "Registration pending (the register_model step creates the version): fine-tuned accuracy 0.800 "
                 "beats gemma4_baseline 0.600 by 0.200."),
    (False, None, "Not registered: fine-tuned accuracy 0.800 beats gemma4_baseline 0.600 by 0.200."),
])
def test_the_decision_is_one_sentence_that_says_it_once(registered, version, sentence) -> None:
    reason = ("registered: " if registered else "not registered: ") + \
        "fine-tuned accuracy 0.800 beats gemma4_baseline 0.600 by 0.200"
    assert decision_sentence(registered, reason, version) == sentence
    page = _report(registered=registered, reason=reason, model_version=version)
    banner = re.search(r'<div class="decision (\w+)">(.*?)</div>', page)
    assert banner.group(1) == {True: "yes" if version else "pending", False: "no"}[registered]
    assert re.sub(r"<[^>]+>", "", banner.group(2)) == sentence
    assert banner.group(2).lower().count("registered") <= 1


def test_run_details_from_the_manifest_the_training_metrics_and_the_parameters() -> None:
    manifest = {"dataset_hash": "3f1c9a", "source": {"kind": "oxford", "uri": "gs://b/oxford-iiit-pet"}}
    training = {"steps": 144, "examples": 2310, "train_time_s": 7384.0, "lora_target_modules": ["a", "b", "c"],
                "config": {"lora_r": 64, "lora_alpha": 32}}
    details = run_details(run_id="pets-20261103", base_model="/gcs/b/gemma-4-31b-it", image_token_budget=280,
                          scoring="score", n_eval=740, manifest=manifest, training=training,
                          source_fingerprint="ab12cd")
    assert details == {
        "run id": "pets-20261103", "base model": "/gcs/b/gemma-4-31b-it", "dataset hash": "3f1c9a",
        "dataset source": "gs://b/oxford-iiit-pet (oxford)", "source fingerprint": "ab12cd",
        "LoRA": "rank 64, alpha 32, 3 target modules", "image token budget": "280 soft tokens per image",
        "training": "144 optimizer steps on 2310 examples, 2h 03m in training steps",
        "evaluation": "740 test examples, scoring: score"}
    # What the inputs do not have is left out, not shown empty.
    bare = run_details(run_id="", base_model="m", image_token_budget=70, scoring="generate", n_eval=2, manifest={},
                       training={})
    assert list(bare) == ["base model", "image token budget", "evaluation"]
    one = run_details(run_id="r", base_model="m", image_token_budget=70, scoring="score", n_eval=2, manifest={},
                      training={"steps": 1, "examples": 42})
    assert one["training"] == "1 optimizer step on 42 examples"
    page = _report(extra=details)
    assert "<tr><th>LoRA</th><td>rank 64, alpha 32, 3 target modules</td></tr>" in page


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(classes=["beagle", NASTY, "pug"]), "classes .* do not match"),
        (dict(loss_curve=[(10, 1.0), (10, 0.9)]), "steps must increase"),
        (dict(loss_curve=[(1, float("nan"))]), r"loss_curve\[0\]"),
        (dict(loss_curve=[(1.5, 1.0)]), r"loss_curve\[0\]"),
        (dict(title=""), "title must be"),
        (dict(reason=" "), "reason must be"),
        (dict(finetuned={"accuracy": 1}), "finetuned must be a ClassificationResult"),
        (dict(extra={1: "x"}), "extra must be a dict"),
        (dict(rows=[]), "rows must be a non-empty"),
    ],
)
def test_html_validation(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _report(**overrides)


# --- PNG --------------------------------------------------------------------------------------------------


def test_loss_curve_png_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "plots" / "loss.png"
    loss_curve_png([(1, 2.0), (2, 1.5), (3, 1.2)], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_loss_curve_png_rejects_empty(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loss_curve is empty"):
        loss_curve_png([], tmp_path / "x.png")


def test_register_model_s_summary_names_the_version_it_created(tmp_path: Path) -> None:
    from dataclasses import asdict

    from petqlora.steps import registration_summary

    reason = "registered: fine-tuned accuracy 0.875 beats gemma4_baseline 0.701 by 0.174"
    details = {"run id": "run-7", "dataset hash": "3f1c9a"}
    (tmp_path / "evaluation.json").write_text(json.dumps(
        {"register": True, "reason": reason, "rows": [asdict(r) for r in ROWS], "details": details}))
    md = registration_summary(str(tmp_path), "petqlora-gemma4-pets@2")
    # The same table and details as evaluate's summary, which said "pending"; now the real version.
    assert md == markdown_summary(ROWS, registered=True, model_version="petqlora-gemma4-pets@2", reason=reason,
                                  details=details)
    assert ("**Decision:** Registered as model version `petqlora-gemma4-pets@2`: fine-tuned accuracy 0.875 beats "
            "gemma4\\_baseline 0.701 by 0.174.") in md
