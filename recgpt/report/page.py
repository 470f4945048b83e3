"""The report's HTML page: header, metrics table, plots, sample tags and notes in one self-contained
page, written as `index.html` for analysts who open it from a share without internet."""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import pandas as pd

from recgpt.report.data import (
    MISSING,
    ReportData,
    Variant,
    check_columns,
    format_value,
    metric_intervals,
    metric_order,
    metric_values,
    models_of,
    of_variant,
    row_decimals,
    sample_users,
    share_metrics,
    variants_of,
)
from recgpt.report.plots import Plot, report_plots


def write_report(out_dir: Path | str, data: ReportData) -> Path:
    """Writes out_dir/index.html (creating out_dir) and returns its path. The page is written to a
    temporary file and renamed, so a rerun never leaves an analyst a half-written page."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "index.html"
    partial = out / f".index.html.{os.getpid()}.tmp"
    partial.write_text(render_html(data), encoding="utf-8")
    os.replace(partial, target)
    return target


def render_html(data: ReportData) -> str:
    """The whole page as one string."""
    check_columns(data)
    variants = variants_of(data.metrics, data.tags)
    values = metric_values(data.metrics)
    ranges = metric_intervals(data.metrics)
    shares = share_metrics(values, data.share_metrics)
    plots = report_plots(data, variants, values, shares)
    body = "\n".join(
        [
            _header_html(data, variants, models_of(data.metrics), _generated_at(data)),
            "<h2>Metrics</h2>",
            _metrics_table_html(data, variants, values, shares, ranges),
            _format_rule_html(metric_order(values, data.headline), shares),
            *_comparisons_html(data.comparisons, shares),
            "<h2>Plots</h2>",
            *(_plot_html(p) for p in plots),
            "<h2>Sample tags</h2>",
            _samples_html(data, variants),
            "<h2>Explanations</h2>",
            _explanations_html(data.explanations),
            "<h2>Judged samples</h2>",
            _judged_html(data.judged),
            "<h2>Notes</h2>",
            _notes_html(data.notes),
        ]
    )
    return _PAGE.format(title=_esc(f"{data.title} · {data.dt}"), style=_STYLE, body=body)


def _generated_at(data: ReportData) -> str:
    return (data.generated_at or _dt.datetime.now(_dt.UTC)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()


# Tags are model output and titles, categories and notes come from data: every such string goes
# through here on its way into the page.
def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _header_html(
    data: ReportData, variants: Sequence[Variant], models: Mapping[Variant, list[str]], generated: str
) -> str:
    shown = (
        "".join(
            f'<li><span class="variant">{_esc(v.label)}</span>'
            + (f' <span class="muted">{_esc(", ".join(models[v]))}</span>' if v in models else "")
            + "</li>"
            for v in variants
        )
        or f"<li>{MISSING} (no metrics and no tags)</li>"
    )
    return (
        f"<header><h1>{_esc(data.title)}</h1>\n<dl>"
        f"<dt>run date</dt><dd>{_esc(data.dt)}</dd>"
        f"<dt>run id</dt><dd><code>{_esc(data.run_id)}</code></dd>"
        f"<dt>generated</dt><dd>{_esc(generated)}</dd>"
        f'<dt>variants</dt><dd><ul class="inline">{shown}</ul></dd>'
        "</dl></header>"
    )


def _metrics_table_html(
    data: ReportData,
    variants: Sequence[Variant],
    values: Mapping[str, Mapping[Variant, float]],
    shares: Collection[str],
    ranges: Mapping[str, Mapping[Variant, tuple[float, float]]] | None = None,
) -> str:
    head = "".join(f'<th class="num">{_esc(v.label)}</th>' for v in variants)
    ranges = ranges or {}
    rows = "".join(
        _metric_row_html(
            data,
            metric,
            [values.get(metric, {}).get(v) for v in variants],
            metric in shares,
            [ranges.get(metric, {}).get(v) for v in variants],
        )
        for metric in metric_order(values, data.headline)
    )
    return (
        '<div class="scroll"><table class="metrics">'
        f"<thead><tr><th>metric</th>{head}<th>definition</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
    )


def _metric_row_html(
    data: ReportData,
    metric: str,
    row: Sequence[float | None],
    share: bool,
    ranges: Sequence[tuple[float, float] | None] = (),
) -> str:
    decimals = None if share else row_decimals(row)
    spans = list(ranges) or [None] * len(row)
    cells = "".join(
        f'<td class="num">{format_value(x, share, decimals)}'
        + (
            f'<br><span class="ci">{format_value(r[0], share, decimals)} – '
            f"{format_value(r[1], share, decimals)}</span>"
            if r is not None
            else ""
        )
        + "</td>"
        for x, r in zip(row, spans, strict=True)
    )
    css = ' class="headline"' if metric in data.headline else ""
    doc = data.metric_docs.get(metric, "")
    return f"<tr{css}><th><code>{_esc(metric)}</code></th>{cells}<td>{_esc(doc)}</td></tr>"


def _comparisons_html(comparisons: pd.DataFrame | None, shares: Collection[str]) -> list[str]:
    """The paired differences, one row each: a difference whose interval leaves out 0 is marked."""
    if comparisons is None or comparisons.empty:
        return []
    rows = []
    ordered = comparisons.sort_values(["metric", "pipeline", "context_mode", "other"])
    for r in ordered.to_dict("records"):
        metric = str(r["metric"])
        share = metric in shares or metric.startswith(("hr", "recall", "exclusive", "failure"))
        low, high = float(r["ci95_low"]), float(r["ci95_high"])
        css = ' class="clear"' if low > 0 or high < 0 else ""
        variant = Variant(str(r["pipeline"]), str(r["context_mode"])).label
        other = str(r["other"]).replace(".", " · ")
        rows.append(
            f"<tr{css}><th><code>{_esc(metric)}</code></th><td>{_esc(variant)}</td><td>{_esc(other)}</td>"
            f'<td class="num">{_signed(float(r["difference"]), share)}</td>'
            f'<td class="num">{_signed(low, share)} … {_signed(high, share)}</td>'
            f'<td class="num">{int(r["users"]):,}</td></tr>'
        )
    return [
        "<h2>Comparisons</h2>",
        '<div class="scroll"><table class="metrics"><thead><tr><th>metric</th><th>variant</th>'
        "<th>minus</th><th>difference</th><th>95% interval</th><th>users</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>",
        '<p class="muted">Paired over the users both sides scored (a failed user is a miss): each of '
        "the bootstrap's replicates resamples users with both their values. <code>history</code> and "
        "<code>popular</code> are the LLM-free baselines given as many categories as the variant's "
        "tags name. Rows in bold: the interval leaves out 0.</p>",
    ]


def _signed(value: float, share: bool) -> str:
    return f"{value * 100:+.2f} pt" if share else f"{value:+.3f}"


def _format_rule_html(metrics: Sequence[str], shares: Collection[str]) -> str:
    as_share = [m for m in metrics if m in shares]
    listed = ", ".join(f"<code>{_esc(m)}</code>" for m in as_share) or MISSING
    return (
        '<p class="muted">Bold rows are the headline metrics. A metric is shown as a percentage '
        "(two decimals) when its name says it is a share (hit rate, recall, precision, rate, share, "
        "coverage, recovery, accuracy, fraction) and all its values lie in [0, 1]; other metrics are "
        f"plain numbers. {MISSING} means not computed (NaN). As percentages here: {listed}.</p>"
    )


def _plot_html(plot: Plot) -> str:
    if plot.png is None:
        return (
            f'<section class="plot"><h3>{_esc(plot.title)}</h3>'
            f'<p class="na">Not available: {_esc(plot.missing)}.</p></section>'
        )
    encoded = base64.b64encode(plot.png).decode("ascii")
    return (
        f'<section class="plot"><h3>{_esc(plot.title)}</h3><figure>'
        f'<img src="data:image/png;base64,{encoded}" alt="{_esc(plot.title)}">'
        f"<figcaption>{_esc(plot.caption)}</figcaption></figure></section>"
    )


def _samples_html(data: ReportData, variants: Sequence[Variant]) -> str:
    tagged = [v for v in variants if not of_variant(data.tags, v).empty]
    if not tagged:
        return '<p class="na">Not available: no tags.</p>'
    users = sample_users(data.tags, data.sample_users)
    return "\n".join(_variant_sample_html(data, v, users) for v in tagged)


def _variant_sample_html(data: ReportData, variant: Variant, users: Sequence[str]) -> str:
    tags = of_variant(data.tags, variant)
    tags = tags.assign(user_id=tags["user_id"].astype(str)).sort_values(["user_id", "rank"], kind="stable")
    by_user = {str(u): g for u, g in tags.groupby("user_id", sort=False)}
    rows = "".join(
        f"<tr><th><code>{_esc(user)}</code></th>"
        f"<td>{_user_tags_html(by_user.get(user), data.sample_tags_per_user)}</td></tr>"
        for user in users
    )
    return (
        f'<details open><summary>{_esc(variant.label)} <span class="muted">'
        f"({tags['user_id'].nunique():,} users, {len(tags):,} tags)</span></summary>"
        f'<table class="samples"><thead><tr><th>user</th><th>tags by rank (category)</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></details>"
    )


def _user_tags_html(tags: pd.DataFrame | None, shown: int) -> str:
    """One user's first `shown` tags by rank, each with its category, and how many are left out."""
    if tags is None:
        return f'<span class="muted">{MISSING} no tags</span>'
    items = "".join(
        f'<li><span class="tag">{_esc(t.tag)}</span>'
        f'<span class="cat">{_category_text(t.category)}</span></li>'
        for t in tags.head(shown).itertuples(index=False)
    )
    more = len(tags) - shown
    return f'<ol class="tags">{items}</ol>' + (f'<span class="muted">+{more} more</span>' if more > 0 else "")


def _category_text(category: object) -> str:
    return _esc(category) if isinstance(category, str) else MISSING


def _explanations_html(explanations: pd.DataFrame | None, pairs: int = 12) -> str:
    """The modes side by side for the same (user, item): the written line, or why there is none."""
    if explanations is None or explanations.empty:
        return '<p class="na">Not available: nothing explained for this date.</p>'
    modes = [m for m in ("meta", "single", "template") if m in set(explanations["explanation_mode"])]
    keys = ["pipeline", "context_mode", "user_id", "tag_rank", "tag", "item_id"]
    out = []
    for (pipeline, context_mode), frame in explanations.groupby(["pipeline", "context_mode"], sort=True):
        rows = []
        for key, group in list(frame.sort_values(keys, kind="stable").groupby(keys, sort=False))[:pairs]:
            by_mode = {r.explanation_mode: r for r in group.itertuples(index=False)}
            cells = "".join(_explanation_cell(by_mode.get(m)) for m in modes)
            rows.append(
                f"<tr><th><code>{_esc(key[2])}</code><br><code>{_esc(key[5])}</code></th>"
                f'<td><span class="tag">{_esc(key[4])}</span></td>{cells}</tr>'
            )
        head = "".join(f"<th>{_esc(m)}</th>" for m in modes)
        out.append(
            f"<details open><summary>{_esc(f'{pipeline} · {context_mode}')}</summary>"
            f'<table class="samples"><thead><tr><th>user / item</th><th>interest</th>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></details>"
        )
    return "\n".join(out)


def _judged_html(judged: pd.DataFrame | None) -> str:
    """The judge's grade of sample tags and lines, with each failed dimension's reason."""
    if judged is None or judged.empty:
        return '<p class="na">Not available: nothing judged for this date.</p>'
    out = []
    order = ["pipeline", "context_mode", "user_id", "tag_rank", "kind"]
    for (pipeline, context_mode), frame in judged.sort_values(order).groupby(["pipeline", "context_mode"]):
        rows = "".join(
            f"<tr><th><code>{_esc(r.user_id)}</code></th><td>{_esc(r.kind)}</td><td>{_esc(r.text)}</td>"
            f'<td><b>{_esc(r.grade)}</b></td><td class="muted">{_esc(r.failing or "")}</td></tr>'
            for r in frame.itertuples(index=False)
        )
        out.append(
            f"<details open><summary>{_esc(f'{pipeline} · {context_mode}')}</summary>"
            '<table class="samples"><thead><tr><th>user</th><th>what</th><th>text</th><th>grade</th>'
            f"<th>failed dimensions</th></tr></thead><tbody>{rows}</tbody></table></details>"
        )
    return "\n".join(out)


def _explanation_cell(row: object) -> str:
    if row is None:
        return f'<td class="muted">{MISSING}</td>'
    line = getattr(row, "explanation", None)
    if not isinstance(line, str):
        return f'<td class="muted">failed: {_esc(getattr(row, "reason", None) or "unknown")}</td>'
    guide = getattr(row, "style_guide", None)
    note = f'<br><span class="muted">{_esc(guide)}</span>' if isinstance(guide, str) else ""
    return f"<td>{_esc(line)}{note}</td>"


def _notes_html(notes: Sequence[str]) -> str:
    if not notes:
        return '<p class="muted">No notes.</p>'
    return "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"


# Analysts open the page from a share without internet, so nothing may load from the network:
# CSS is inline, plots are data: images, there are no scripts, fonts or links, and the
# Content-Security-Policy forbids anything else.
_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
{body}
</body>
</html>
"""

_STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222;
       margin: 0 auto; padding: 1.5em 2em 3em; max-width: 1100px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 .4em; }
h2 { font-size: 1.25em; margin: 1.8em 0 .6em; border-bottom: 1px solid #ddd; padding-bottom: .2em; }
h3 { font-size: 1.05em; margin: 1.2em 0 .4em; }
code { font: 12.5px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: .2em 1em; margin: 0; }
header dt { color: #666; }
header dd { margin: 0; }
ul.inline { list-style: none; margin: 0; padding: 0; display: flex; flex-wrap: wrap; gap: .3em .6em; }
ul.inline li { background: #f1f4f8; border-radius: 4px; padding: 0 .5em; }
.variant { font-weight: 600; }
.muted { color: #777; font-size: .92em; }
.na { color: #8a6d3b; background: #fcf8e3; border: 1px solid #f0e2b6; padding: .4em .7em;
      border-radius: 4px; display: inline-block; margin: .2em 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: .3em 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: .3em .7em; text-align: left; vertical-align: top; }
thead th { background: #f6f6f6; border-bottom: 2px solid #ccc; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.metrics td:last-child { color: #555; min-width: 16em; }
table.metrics .ci { color: #777; font-size: 85%; white-space: nowrap; }
table.metrics tr.clear td, table.metrics tr.clear th { font-weight: 600; }
tr.headline th code, tr.headline td.num { font-weight: 700; }
tr.headline { background: #fbfcff; }
figure { margin: .3em 0 1em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #666; font-size: .9em; margin-top: .2em; }
details { margin: .6em 0 1em; }
summary { font-weight: 600; cursor: pointer; }
table.samples { width: 100%; }
ol.tags { margin: 0; padding: 0; list-style: none; display: flex; flex-wrap: wrap; gap: .25em .4em; }
ol.tags li { background: #f3f6f9; border: 1px solid #e1e7ee; border-radius: 4px; padding: 0 .4em; }
.tag { overflow-wrap: anywhere; }
.cat { color: #777; font-size: .85em; margin-left: .35em; }
.cat::before { content: "("; } .cat::after { content: ")"; }
"""
