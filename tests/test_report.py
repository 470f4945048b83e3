"""The offline-evaluation page: every variant and headline metric shown, one inline PNG per plot
that has data (comparisons only when both sides ran), untrusted tags escaped, NaN as a dash, shares
as percentages and counts as numbers, and nothing that would load from the network."""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from recgpt.report import (
    HEADLINE,
    MISSING,
    ReportData,
    ReportDataError,
    format_value,
    render_html,
    row_decimals,
    share_metrics,
    write_report,
)

IMG = '<img src="data:image/png;base64,'
HOSTILE = "<script>alert(1)</script>"
VARIANTS = [("v2", "hybrid"), ("v2", "text"), ("v1_baseline", "hybrid"), ("v1_baseline", "text")]
CATEGORIES = ["outdoor", "baby", "fitness", "kitchen", "books"]


def metrics_frame(variants=VARIANTS) -> pd.DataFrame:
    rows = []
    for i, (pipeline, mode) in enumerate(variants):
        model = "qwen-tiny"
        values = {
            "hr30": 0.30 - 0.02 * i,
            "exclusive_recall": 0.11 - 0.005 * i,
            "recall_at_30_tags": 0.25,
            "recall_at_30_covisit": 0.2,
            # V1 has no personas: not computed.
            "persona_recovery": 0.5 if pipeline == "v2" else math.nan,
            "tokens_per_user": 5158.0 + 1000 * i,
            "diversity": 0.631,
        }
        rows += [(pipeline, mode, model, metric, value) for metric, value in values.items()]
    return pd.DataFrame(rows, columns=["pipeline", "context_mode", "model", "metric", "value"])


EXPLAINED = {
    ("diversity", "meta"): 0.68,
    ("diversity", "single"): 0.63,
    ("diversity", "template"): 0.1,
    ("pass_rate", "meta"): 0.8,
    ("pass_rate", "single"): 0.6,
    ("pass_rate", "template"): 1.0,
}


def explanation_metrics(variant=("v2", "hybrid")) -> pd.DataFrame:
    rows = [(*variant, "qwen-tiny", f"explain_{name}_{mode}", v) for (name, mode), v in EXPLAINED.items()]
    return pd.DataFrame(rows, columns=["pipeline", "context_mode", "model", "metric", "value"])


def explanations_frame() -> pd.DataFrame:
    rows = []
    for u in range(3):
        for mode, line, reason in (
            ("meta", f"Rainy days ahead: this cardigan suits you {u}.", None),
            ("single", None, "too_long"),
            ("template", f"Picked for your interest in warm cardigans {HOSTILE}.", None),
        ):
            guide = "tone: warm; audience: you; angle: rain" if mode == "meta" else None
            rows.append(
                ("v2", "hybrid", f"u{u:02d}", 1, "warm cardigans", f"i{u}", mode, line, guide, reason)
            )
    columns = ["pipeline", "context_mode", "user_id", "tag_rank", "tag", "item_id", "explanation_mode"]
    return pd.DataFrame(rows, columns=[*columns, "explanation", "style_guide", "reason"])


def tags_frame(variants=VARIANTS, users: int = 12, per_user: int = 4) -> pd.DataFrame:
    rows = []
    for pipeline, mode in variants:
        for u in range(users):
            for rank in range(1, per_user + 1):
                category = CATEGORIES[(u + rank) % len(CATEGORIES)] if rank < per_user else None
                tag = " ".join(["warm"] * (rank + 1)) + " cardigan"
                rows.append((pipeline, mode, f"u{u:02d}", rank, tag, category))
    rows.append((variants[0][0], variants[0][1], "u00", per_user + 1, HOSTILE, "<b>cat</b>"))
    return pd.DataFrame(rows, columns=["pipeline", "context_mode", "user_id", "rank", "tag", "category"])


def categories(counts) -> pd.DataFrame:
    return pd.DataFrame({"category": CATEGORIES, "count": counts})


def report_data(variants=VARIANTS, **overrides) -> ReportData:
    fields = dict(
        title="Offline evaluation, synthetic",
        dt="2025-10-28",
        run_id="run-20251028-abc",
        metrics=metrics_frame(variants),
        tags=tags_frame(variants),
        history_categories=categories([50, 30, 10, 5, 5]),
        heldout_categories=categories([20, 40, 20, 10, 10]),
        metric_docs={"hr30": "category of the next interaction among the 30 tags' categories"},
        notes=["Synthetic data: planted personas.", "Tags are <untrusted> model output."],
        generated_at=dt.datetime(2025, 10, 29, 3, 0, tzinfo=dt.UTC),
    )
    fields.update(overrides)
    return ReportData(**fields)


def images(page: str) -> list[bytes]:
    return [
        base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    ]


def metric_row(page: str, metric: str) -> str:
    match = re.search(rf"<tr[^>]*><th><code>{metric}</code></th>(.*?)</tr>", page)
    assert match, f"no row for {metric}"
    return match.group(1)


def judged_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "pipeline": ["v2", "v2"],
            "context_mode": ["hybrid", "hybrid"],
            "user_id": ["u01", "u01"],
            "tag_rank": [1, 1],
            "kind": ["tag", "meta"],
            "text": ["<b>wool cardigan</b>", "A wool cardigan for the autumn."],
            "grade": ["B", "S"],
            "failing": ["specificity: category peak 0.05 above the mean", ""],
        }
    )


@pytest.fixture(scope="module")
def full_page(tmp_path_factory) -> tuple[Path, str]:
    data = report_data(
        metrics=pd.concat([metrics_frame(), explanation_metrics()], ignore_index=True),
        explanations=explanations_frame(),
        judged=judged_frame(),
    )
    path = write_report(tmp_path_factory.mktemp("eval") / "2025-10-28", data)
    return path, path.read_text(encoding="utf-8")


def test_the_page_is_written_as_index_html_in_a_new_folder(full_page):
    path, page = full_page
    assert path.name == "index.html" and path.is_file()
    assert page.startswith("<!doctype html>")
    assert not [p for p in path.parent.iterdir() if p.name != "index.html"], "temporary file left behind"


def test_every_variant_and_headline_metric_is_shown(full_page):
    _, page = full_page
    for label in ("v2 · hybrid", "v2 · text", "v1_baseline · hybrid", "v1_baseline · text"):
        assert page.count(label) >= 3, label  # header, table column, sample section
    for metric in HEADLINE:
        assert f"<code>{metric}</code>" in page


def test_headline_metrics_come_first_in_order_then_the_rest_alphabetically(full_page):
    _, page = full_page
    table = page.split('<table class="metrics">')[1].split("</table>")[0]
    order = re.findall(r"<tr[^>]*><th><code>(\w+)</code></th>", table)
    rest = sorted(["diversity", "tokens_per_user", *(f"explain_{n}_{m}" for n, m in EXPLAINED)])
    assert order == [*HEADLINE, *rest]


def test_all_five_plots_are_inline_pngs_that_decode(full_page):
    _, page = full_page
    assert page.count(IMG) == 5
    pngs = images(page)
    assert len(pngs) == 5
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert "Not available" not in page.split("<h2>Sample tags</h2>")[0]


def test_the_explanation_modes_sit_side_by_side_for_the_same_pair(full_page):
    _, page = full_page
    section = page.split("<h2>Explanations</h2>")[1].split("<h2>")[0]
    assert "<th>meta</th><th>single</th><th>template</th>" in section
    row = re.search(r"<code>u01</code><br><code>i1</code>.*?</tr>", section, re.S).group(0)
    assert "this cardigan suits you 1." in row and "failed: too_long" in row and "tone: warm" in row
    assert HOSTILE not in section and "&lt;script&gt;" in section
    assert "Explanations by mode" in page


def test_judged_samples_show_the_grade_and_each_failed_dimensions_reason(full_page):
    _, page = full_page
    section = page.split("<h2>Judged samples</h2>")[1].split("<h2>")[0]
    assert "v2 · hybrid" in section
    tag_row = re.search(r"<td>tag</td>.*?</tr>", section, re.S).group(0)
    assert "&lt;b&gt;wool cardigan&lt;/b&gt;" in tag_row and "<b>B</b>" in tag_row
    assert "specificity: category peak 0.05 above the mean" in tag_row
    assert re.search(r"<td>meta</td>.*?<b>S</b>", section, re.S)


def test_a_single_variant_omits_the_comparisons_and_says_so(tmp_path):
    page = write_report(tmp_path, report_data([("v2", "hybrid")])).read_text(encoding="utf-8")
    assert page.count(IMG) == 2
    assert "Not available: nothing explained for this date" in page
    assert "Not available: no explanations for this date" in page
    assert "Not available: needs both pipelines v2 and v1_baseline" in page
    assert "Not available: needs one pipeline with both hybrid and text context" in page


def test_v2_and_v1_in_different_modes_are_still_compared(tmp_path):
    page = render_html(report_data([("v2", "hybrid"), ("v1_baseline", "text")]))
    assert page.count(IMG) == 3  # length, categories, V2 vs V1; no pipeline ran both modes
    assert "ran no context mode in common" in page
    assert "needs one pipeline with both hybrid and text context" in page


def test_hostile_tags_and_categories_appear_only_escaped(full_page):
    _, page = full_page
    assert HOSTILE not in page
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>cat</b>" not in page and "&lt;b&gt;cat&lt;/b&gt;" in page
    assert "&lt;untrusted&gt;" in page


def test_nan_shows_as_a_dash(full_page):
    _, page = full_page
    row = re.findall(r'<td class="num">([^<]*)</td>', metric_row(page, "persona_recovery"))
    assert row == ["50.00%", "50.00%", MISSING, MISSING]


def test_shares_are_percentages_and_counts_are_numbers(full_page):
    _, page = full_page
    assert '<td class="num">30.00%</td>' in metric_row(page, "hr30")
    tokens = metric_row(page, "tokens_per_user")
    assert "5,158" in tokens and "%" not in tokens
    assert "0.631" in metric_row(page, "diversity")  # in [0, 1] but not named a share


def test_definitions_from_metric_docs_are_shown(full_page):
    _, page = full_page
    assert "category of the next interaction among the 30 tags&#x27; categories" in metric_row(page, "hr30")


def test_the_page_loads_nothing_from_outside(full_page):
    _, page = full_page
    assert not re.search(r"""(?:src|href)\s*=\s*(?!["']?data:)""", page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page.lower() and "@import" not in page and "url(" not in page


def test_sample_shows_the_same_first_users_for_every_variant(full_page):
    _, page = full_page
    samples = page.split("<h2>Sample tags</h2>")[1].split("<h2>Explanations</h2>")[0]
    assert samples.count("<details") == 4
    assert samples.count("<code>u00</code>") == 4 and samples.count("<code>u09</code>") == 4
    assert "<code>u10</code>" not in samples


def test_empty_frames_leave_a_page_that_says_what_is_missing(tmp_path):
    empty_tags = tags_frame().iloc[0:0]
    empty_cats = categories([0] * 5).iloc[0:0]
    data = report_data(tags=empty_tags, history_categories=empty_cats, heldout_categories=empty_cats)
    page = write_report(tmp_path, data).read_text(encoding="utf-8")
    assert page.count(IMG) == 2  # the two metric comparisons still have data
    assert 'Tag length</h3><p class="na">Not available: no tags.' in page


def test_two_values_for_one_cell_raise_instead_of_picking_one():
    metrics = metrics_frame()
    clash = metrics.iloc[[0]].assign(model="other-model", value=0.99)
    with pytest.raises(ReportDataError, match="hr30 of v2 · hybrid"):
        render_html(report_data(metrics=pd.concat([metrics, clash])))


def test_a_missing_column_is_named():
    with pytest.raises(ReportDataError, match="metrics lacks column"):
        render_html(report_data(metrics=metrics_frame().drop(columns=["model"])))


def test_plot_labels_with_dollar_signs_do_not_break_matplotlib(tmp_path):
    tags = tags_frame().assign(category="$5 deals $")
    page = write_report(tmp_path, report_data(tags=tags)).read_text(encoding="utf-8")
    assert page.count(IMG) == 4


def test_no_figures_are_left_open_in_pyplot(full_page):
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []


def test_value_formatting_rule():
    assert format_value(0.2629, share=True) == "26.29%"
    assert format_value(math.nan, share=True) == MISSING
    assert format_value(None, share=False) == MISSING
    assert format_value(21349.0, share=False) == "21,349"
    assert format_value(1234.56, share=False) == "1,234.6"
    assert format_value(3.14159, share=False) == "3.14"
    # One row shares its decimals, so 5 and 4.6 calls per user read 5.00 and 4.60.
    assert [format_value(v, False, row_decimals([5.0, 4.6])) for v in (5.0, 4.6)] == ["5.00", "4.60"]
    assert row_decimals([5158.0, math.nan, 9800.2]) == 1
    assert row_decimals([0.41, 0.377]) == 3
    assert row_decimals([3.0, 4.0, None]) == 0
    values = {"hr30": {}, "duplicate_tag_rate": {}, "token_ratio": {}, "odd_recall": {}}
    values["odd_recall"] = {("v2", "hybrid"): 1.5}  # type: ignore[dict-item]
    assert share_metrics(values) == {"hr30", "duplicate_tag_rate"}
    assert share_metrics(values, extra={"token_ratio"}) == {"hr30", "duplicate_tag_rate", "token_ratio"}


def test_reward_curves_draw_one_line_per_run_and_say_why_when_none_ran():
    from recgpt.report.plots import reward_curve_plot

    plot = reward_curve_plot(
        {"synthetic GRPO(CRS)": [0.1, 0.2, 0.25], "synthetic GRPO(SUM)": [0.3, 0.28], "empty": []}
    )
    assert plot.png is not None and plot.png.startswith(b"\x89PNG\r\n\x1a\n") and not plot.missing
    assert plot.caption.endswith(
        ": synthetic GRPO(CRS), synthetic GRPO(SUM)."
    )  # no line for a run without steps
    none = reward_curve_plot({"synthetic GRPO(CRS)": []})
    assert none.png is None and "no training run" in none.missing
