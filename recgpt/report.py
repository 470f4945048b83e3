"""The offline-evaluation report: one self-contained HTML page per run date (metrics per variant,
tag and category plots, sample tags) that the evaluation stage writes under `_reports/eval/`.

Pure Python, no Spark: the evaluation stage computes the frames and calls `write_report`. Analysts
open the page from a share without internet, so everything is inline: CSS in a `<style>` block,
plots as base64 PNGs, no scripts, fonts or links, and a Content-Security-Policy that forbids
loading anything else. Every string that comes from data (tags are model output) is escaped.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import math
import os
import re
import textwrap
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from recgpt.errors import RecGPTError

HEADLINE: tuple[str, ...] = (
    "hr30",
    "exclusive_recall",
    "recall_at_30_tags",
    "recall_at_30_covisit",
    "persona_recovery",
)
# Known pipelines and context modes come first, in this order; any others follow alphabetically.
PIPELINE_ORDER: tuple[str, ...] = ("v2", "v1_baseline")
MODE_ORDER: tuple[str, ...] = ("hybrid", "text")

# A metric is a share (shown as a percentage) when one of the `_`-separated parts of its name is
# one of these words or `hr<k>` (hit rate at k) and all its values lie in [0, 1]. The name decides,
# not the value alone: a diversity of 0.63 or a count of 1 is not 63% or 100%. Counts and other
# numbers (tokens_per_user, token_ratio, diversity) are shown as plain numbers.
SHARE_WORDS = frozenset(
    {"hr", "recall", "precision", "rate", "share", "coverage", "recovery", "accuracy", "fraction"}
)
_HIT_RATE = re.compile(r"hr\d*")
MISSING = "–"

_DPI = 100
_WIDTH_IN = 7.0
_MAX_WORDS_BIN = 15  # longer tags share the last bar ("15+")
_TOP_CATEGORIES = 15
_LABEL_CHARS = 32
_HISTORY_COLOR, _HELDOUT_COLOR = "#b0b0b0", "#555555"
_VARIANT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")

_METRIC_COLUMNS = ("pipeline", "context_mode", "model", "metric", "value")
_TAG_COLUMNS = ("pipeline", "context_mode", "user_id", "rank", "tag", "category")
_CATEGORY_COLUMNS = ("category", "count")


class ReportDataError(RecGPTError, ValueError):
    """The frames handed to the report lack a column or are ambiguous (two values for one cell)."""


@dataclass(frozen=True)
class ReportData:
    """Everything one evaluation page shows. Frames may be empty: the page then says what is
    missing instead of failing, so a partial evaluation still leaves a report behind."""

    title: str
    dt: str
    run_id: str
    metrics: pd.DataFrame  # pipeline, context_mode, model, metric, value (float, may be NaN)
    tags: pd.DataFrame  # pipeline, context_mode, user_id, rank, tag, category (may be None)
    history_categories: pd.DataFrame  # category, count: users' behaviours before dt
    heldout_categories: pd.DataFrame  # category, count: behaviours in the held-out window
    metric_docs: Mapping[str, str] = field(default_factory=dict)
    notes: Sequence[str] = ()
    headline: Sequence[str] = HEADLINE
    # Metrics to show as percentages although their names do not say so (see SHARE_WORDS).
    share_metrics: Collection[str] = ()
    # How many users (the same ones for every variant) and tags per user the sample shows.
    sample_users: int = 10
    sample_tags_per_user: int = 10
    # Fixed in tests; the time of writing otherwise.
    generated_at: _dt.datetime | None = None


class Variant(NamedTuple):
    pipeline: str
    context_mode: str

    @property
    def label(self) -> str:
        return f"{self.pipeline} · {self.context_mode}"


@dataclass(frozen=True)
class Plot:
    """A rendered figure, or the reason there is none."""

    title: str
    caption: str
    png: bytes | None = None
    missing: str = ""


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
    _check_columns(data)
    variants = variants_of(data.metrics, data.tags)
    values = metric_values(data.metrics)
    shares = share_metrics(values, data.share_metrics)
    plots = [
        tag_length_plot(data.tags, variants),
        category_plot(data.tags, data.history_categories, data.heldout_categories, variants),
        v2_vs_v1_plot(variants, values, _plotted_headline(data.headline, shares)),
        hybrid_vs_text_plot(variants, values, _plotted_headline(data.headline, shares)),
    ]
    generated = (data.generated_at or _dt.datetime.now(_dt.UTC)).strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    body = "\n".join(
        [
            _header_html(data, variants, _models_of(data.metrics), generated),
            "<h2>Metrics</h2>",
            _metrics_table_html(data, variants, values, shares),
            _format_rule_html(metric_order(values, data.headline), shares),
            "<h2>Plots</h2>",
            *(_plot_html(p) for p in plots),
            "<h2>Sample tags</h2>",
            _samples_html(data, variants),
            "<h2>Notes</h2>",
            _notes_html(data.notes),
        ]
    )
    return _PAGE.format(title=_esc(f"{data.title} · {data.dt}"), style=_STYLE, body=body)


# --- data -----------------------------------------------------------------------------------


def _check_columns(data: ReportData) -> None:
    for name, frame, columns in (
        ("metrics", data.metrics, _METRIC_COLUMNS),
        ("tags", data.tags, _TAG_COLUMNS),
        ("history_categories", data.history_categories, _CATEGORY_COLUMNS),
        ("heldout_categories", data.heldout_categories, _CATEGORY_COLUMNS),
    ):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise ReportDataError(
                f"ReportData.{name} lacks column(s) {missing}; it needs {list(columns)} "
                f"(has {list(frame.columns)})"
            )


def _order_key(value: str, known: Sequence[str]) -> tuple[int, str]:
    return (known.index(value) if value in known else len(known), value)


def variant_key(v: Variant) -> tuple[tuple[int, str], tuple[int, str]]:
    """V2 before the V1 baseline, hybrid before text, unknown names after them alphabetically."""
    return (_order_key(v.pipeline, PIPELINE_ORDER), _order_key(v.context_mode, MODE_ORDER))


def variants_of(*frames: pd.DataFrame) -> list[Variant]:
    """Every (pipeline, context_mode) present in any of the frames, in display order."""
    found: set[Variant] = set()
    for frame in frames:
        pairs = frame[["pipeline", "context_mode"]].dropna().drop_duplicates()
        found.update(Variant(str(p), str(m)) for p, m in pairs.itertuples(index=False))
    return sorted(found, key=variant_key)


def _models_of(metrics: pd.DataFrame) -> dict[Variant, list[str]]:
    models: dict[Variant, list[str]] = {}
    for (p, m), group in metrics.dropna(subset=["model"]).groupby(["pipeline", "context_mode"]):
        models[Variant(str(p), str(m))] = sorted({str(x) for x in group["model"]})
    return models


def metric_values(metrics: pd.DataFrame) -> dict[str, dict[Variant, float]]:
    """metric -> variant -> value. A variant is one run's (pipeline, context_mode); two rows for
    the same cell (two models, or a repeated row) would have to pick one silently, so they raise."""
    out: dict[str, dict[Variant, float]] = {}
    seen_models: dict[tuple[str, Variant], list[str]] = {}
    for row in metrics.itertuples(index=False):
        variant, metric = Variant(str(row.pipeline), str(row.context_mode)), str(row.metric)
        seen_models.setdefault((metric, variant), []).append(str(row.model))
        out.setdefault(metric, {})[variant] = _as_float(row.value)
    clashes = {k: v for k, v in seen_models.items() if len(v) > 1}
    if clashes:
        (metric, variant), models = next(iter(clashes.items()))
        raise ReportDataError(
            f"metrics has {len(models)} rows for {metric} of {variant.label} (models {models}) "
            f"and {len(clashes) - 1} more such cell(s): pass one row per (pipeline, context_mode, metric)"
        )
    return out


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def is_share_name(metric: str) -> bool:
    return any(part in SHARE_WORDS or _HIT_RATE.fullmatch(part) for part in metric.lower().split("_"))


def share_metrics(values: Mapping[str, Mapping[Variant, float]], extra: Collection[str] = ()) -> set[str]:
    """The metrics shown as percentages: named like a share (or listed in `extra`) and with every
    known value in [0, 1]. A value outside means the metric is not a fraction, so it stays a number
    rather than showing as 150%."""
    shares = set()
    for metric in set(values) | set(extra):
        if metric not in extra and not is_share_name(metric):
            continue
        known = [v for v in values.get(metric, {}).values() if not math.isnan(v)]
        if all(0.0 <= v <= 1.0 for v in known):
            shares.add(metric)
    return shares


def format_value(value: float | None, share: bool, decimals: int | None = None) -> str:
    """Shares as percentages with two decimals (26.29%); other numbers with thousands separators
    and `decimals` decimals (see `row_decimals`), or on their own when not given: whole numbers
    without decimals, one decimal from 100 up, three significant digits below; NaN as "–"."""
    if value is None or math.isnan(value):
        return MISSING
    if share:
        return f"{value * 100:.2f}%"
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if decimals is not None:
        return f"{value:,.{decimals}f}"
    if value == int(value):
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.1f}"
    return f"{value:.3g}"


def row_decimals(values: Iterable[float | None]) -> int | None:
    """One number of decimals for a metric's row, so its variants line up and compare digit by
    digit (5.00 next to 4.60, not 5 next to 4.6): none when all are whole, fewer the larger the
    values; None (significant digits each) when all are below 0.01."""
    known = [abs(v) for v in values if v is not None and math.isfinite(v)]
    if all(v == int(v) for v in known):
        return 0
    top = max(known)
    return 1 if top >= 100 else 2 if top >= 1 else 3 if top >= 0.01 else None


def metric_order(metrics: Iterable[str], headline: Sequence[str]) -> list[str]:
    """Headline metrics first in their given order (even when missing, so a gap shows), then the
    rest alphabetically."""
    head = list(dict.fromkeys(headline))
    return head + sorted(set(metrics) - set(head))


def _plotted_headline(headline: Sequence[str], shares: Collection[str]) -> list[str]:
    # The comparison charts share one percentage axis, so a count among the headline metrics
    # (tokens per user) would flatten every bar: it stays in the table only.
    return [m for m in dict.fromkeys(headline) if m in shares]


def _words_per_tag(tags: pd.Series) -> pd.Series:
    return tags.dropna().astype(str).map(lambda tag: len(tag.split()))


def _category_shares(frame: pd.DataFrame) -> pd.Series:
    counts = frame.dropna(subset=["category"]).groupby("category")["count"].sum()
    total = counts.sum()
    return counts / total if total > 0 else counts.astype(float)


def _tag_category_shares(tags: pd.DataFrame) -> tuple[pd.Series, float]:
    """(share of the variant's categorised tags per category, share of its tags without one)."""
    if tags.empty:
        return pd.Series(dtype=float), 0.0
    known = tags["category"].dropna()
    return known.value_counts(normalize=True), 1.0 - len(known) / len(tags)


def _of_variant(frame: pd.DataFrame, variant: Variant) -> pd.DataFrame:
    mask = (frame["pipeline"] == variant.pipeline) & (frame["context_mode"] == variant.context_mode)
    return frame[mask]


# --- plots ----------------------------------------------------------------------------------


def _figure(height_in: float) -> Figure:
    """A figure outside pyplot: nothing is registered in pyplot's global list, so nothing has to
    be closed and the caller's backend (a notebook's, say) is left alone; Agg renders it."""
    fig = Figure(figsize=(_WIDTH_IN, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    fig.clear()
    return buffer.getvalue()


def _plain(text: str, limit: int | None = None) -> str:
    """Data text for a plot label: cut to `limit` characters and with `$` escaped, since
    matplotlib reads `$...$` as math and fails on an unbalanced one."""
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _color(variants: Sequence[Variant], variant: Variant) -> str:
    return _VARIANT_COLORS[variants.index(variant) % len(_VARIANT_COLORS)]


def tag_length_plot(tags: pd.DataFrame, variants: Sequence[Variant]) -> Plot:
    """Words per tag, one bar series per variant, as a share of the variant's tags so variants
    with more users compare fairly."""
    title = "Tag length"
    caption = "Words per tag as a share of each variant's tags; "
    caption += f"tags of {_MAX_WORDS_BIN}+ words share the last bar."
    lengths = {v: _words_per_tag(_of_variant(tags, v)["tag"]) for v in variants}
    lengths = {v: s for v, s in lengths.items() if not s.empty}
    if not lengths:
        return Plot(title, caption, missing="no tags")
    bins = list(range(1, min(int(max(s.max() for s in lengths.values())), _MAX_WORDS_BIN) + 1))
    fig = _figure(3.5)
    ax = fig.add_subplot()
    width = 0.8 / len(lengths)
    for i, (variant, words) in enumerate(lengths.items()):
        shares = words.clip(upper=bins[-1]).value_counts(normalize=True).reindex(bins, fill_value=0.0)
        xs = [b - 0.4 + width * (i + 0.5) for b in bins]
        ax.bar(xs, shares.to_list(), width, label=_plain(variant.label), color=_color(variants, variant))
    ax.set_xticks(bins, [f"{b}+" if b == _MAX_WORDS_BIN else str(b) for b in bins])
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set(title="Words per tag", xlabel="words in the tag", ylabel="share of the variant's tags")
    ax.legend(fontsize=8, frameon=False)
    return Plot(title, caption, _png(fig))


def category_plot(
    tags: pd.DataFrame,
    history: pd.DataFrame,
    heldout: pd.DataFrame,
    variants: Sequence[Variant],
) -> Plot:
    """Share per category of the users' history, the held-out window and each variant's tags, for
    the categories that weigh most in history plus held-out (or in the tags, when neither is known):
    tags that follow the held-out bars better than the history bars anticipate new interests."""
    title = "Category distribution"
    series: list[tuple[str, pd.Series, str]] = [
        ("history (before dt)", _category_shares(history), _HISTORY_COLOR),
        ("held-out window", _category_shares(heldout), _HELDOUT_COLOR),
    ]
    uncategorised = []
    for variant in variants:
        shares, none = _tag_category_shares(_of_variant(tags, variant))
        if not shares.empty or none > 0:
            series.append((f"tags {variant.label}", shares, _color(variants, variant)))
        if none > 0:
            uncategorised.append(f"{variant.label}: {none:.1%}")
    caption = (
        f"Top {_TOP_CATEGORIES} categories by history + held-out share. Tag shares are of the tags "
        "with a category" + (f"; tags without one: {', '.join(uncategorised)}." if uncategorised else ".")
    )
    reference = series[0][1].add(series[1][1], fill_value=0.0)
    if reference.empty and len(series) > 2:
        reference = pd.concat([s for _, s, _ in series[2:]]).groupby(level=0).sum()
    if reference.empty:
        return Plot(title, caption, missing="no category counts and no categorised tags")
    top = [str(c) for c in reference.sort_values(ascending=False, kind="stable").index[:_TOP_CATEGORIES]]
    fig = _figure(max(3.5, 1.6 + 0.09 * len(top) * len(series)))
    ax = fig.add_subplot()
    height = 0.8 / len(series)
    for i, (name, shares, color) in enumerate(series):
        ys = [c - 0.4 + height * (i + 0.5) for c in range(len(top))]
        ax.barh(ys, shares.reindex(top, fill_value=0.0).to_list(), height, label=_plain(name), color=color)
    ax.set_yticks(range(len(top)), [_plain(c, _LABEL_CHARS) for c in top], fontsize=8)
    ax.invert_yaxis()
    ax.xaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
    ax.set(title="Share per category", xlabel="share", ylabel="category")
    # Below the axes: inside them it hides the bars of whichever category sits under it.
    fig.legend(fontsize=8, frameon=False, loc="outside lower center", ncols=3)
    return Plot(title, caption, _png(fig))


def _comparison_figure(
    suptitle: str,
    panels: Sequence[tuple[str, Sequence[Variant]]],
    values: Mapping[str, Mapping[Variant, float]],
    metrics: Sequence[str],
    colors: Sequence[Variant],
) -> bytes:
    """One row of grouped bars per panel: x = metric, one bar per variant, value on top."""
    fig = _figure(0.6 + 2.6 * len(panels))
    fig.suptitle(_plain(suptitle), fontsize=11)
    axes: list[Axes] = [fig.add_subplot(len(panels), 1, i + 1) for i in range(len(panels))]
    top = max((values[m].get(v, math.nan) for m in metrics for _, vs in panels for v in vs), default=0.0)
    top = 1.0 if math.isnan(top) or top <= 0 else top
    for ax, (title, shown) in zip(axes, panels, strict=True):
        width = 0.8 / len(shown)
        for i, variant in enumerate(shown):
            heights = [values[m].get(variant, math.nan) for m in metrics]
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(metrics))]
            bars = ax.bar(xs, heights, width, label=_plain(variant.label), color=_color(colors, variant))
            ax.bar_label(bars, [f"{h * 100:.1f}" for h in heights], fontsize=7, padding=1)
            for x, h in zip(xs, heights, strict=True):
                if math.isnan(h):  # no bar to label: say so rather than look like zero
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, color="#777")
        ax.set_xticks(range(len(metrics)), [_tick(m) for m in metrics], fontsize=8)
        ax.set_xlim(-0.5, len(metrics) - 0.5)  # NaN bars do not widen the axis; their n/a must fit
        ax.set_ylim(0, top * 1.18)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.yaxis.set_major_locator(MaxNLocator(5))
        ax.set(title=_plain(title), ylabel="share")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1].set_xlabel("headline metric")
    return _png(fig)


def _tick(metric: str) -> str:
    """`recall_at_30_covisit` as two lines, so five metric names fit under a 7-inch axis."""
    return textwrap.fill(_plain(metric.replace("_", " ")), width=14)


def _has_values(
    values: Mapping[str, Mapping[Variant, float]], metrics: Sequence[str], vs: Iterable[Variant]
) -> bool:
    return any(not math.isnan(values.get(m, {}).get(v, math.nan)) for m in metrics for v in vs)


def v2_vs_v1_plot(
    variants: Sequence[Variant], values: Mapping[str, Mapping[Variant, float]], metrics: Sequence[str]
) -> Plot:
    """V2 against the V1 baseline on the headline metrics, one panel per context mode both ran;
    when they share none, every mode of each side in one panel, labelled as such."""
    title = "V2 vs V1 baseline"
    caption = "Headline share metrics (bar labels in %); each panel compares variants of one context mode."
    v2 = [v for v in variants if v.pipeline == "v2"]
    v1 = [v for v in variants if v.pipeline == "v1_baseline"]
    if not v2 or not v1:
        return Plot(title, caption, missing="needs both pipelines v2 and v1_baseline")
    common = [m for m in dict.fromkeys(v.context_mode for v in v2) if m in {v.context_mode for v in v1}]
    if common:
        panels = [(f"{mode} context", [Variant("v2", mode), Variant("v1_baseline", mode)]) for mode in common]
    else:
        panels = [("different context modes: " + " vs ".join(v.label for v in v2 + v1), v2 + v1)]
        caption = "Headline share metrics (bar labels in %). V2 and V1 ran no context mode in common: "
        caption += "the difference mixes pipeline and context mode."
    if not metrics or not _has_values(values, metrics, v2 + v1):
        return Plot(title, caption, missing="no headline share metric has a value for these variants")
    return Plot(title, caption, _comparison_figure(title, panels, values, metrics, variants))


def hybrid_vs_text_plot(
    variants: Sequence[Variant], values: Mapping[str, Mapping[Variant, float]], metrics: Sequence[str]
) -> Plot:
    """Hybrid against text context on the headline metrics, one panel per pipeline that ran both:
    what the one-token entity representation costs or gains in quality."""
    title = "Hybrid vs text context"
    caption = "Headline share metrics (bar labels in %), per pipeline that ran both context modes."
    pipelines = dict.fromkeys(v.pipeline for v in variants)
    panels = [
        (f"pipeline {p}", [Variant(p, "hybrid"), Variant(p, "text")])
        for p in pipelines
        if Variant(p, "hybrid") in variants and Variant(p, "text") in variants
    ]
    if not panels:
        return Plot(title, caption, missing="needs one pipeline with both hybrid and text context")
    if not metrics or not _has_values(values, metrics, [v for _, vs in panels for v in vs]):
        return Plot(title, caption, missing="no headline share metric has a value for these variants")
    return Plot(title, caption, _comparison_figure(title, panels, values, metrics, variants))


# --- html -----------------------------------------------------------------------------------


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
) -> str:
    headline = set(data.headline)
    head = "".join(f'<th class="num">{_esc(v.label)}</th>' for v in variants)
    rows = []
    for metric in metric_order(values, data.headline):
        row = [values.get(metric, {}).get(v) for v in variants]
        share = metric in shares
        decimals = None if share else row_decimals(row)
        cells = "".join(f'<td class="num">{format_value(x, share, decimals)}</td>' for x in row)
        css = ' class="headline"' if metric in headline else ""
        doc = data.metric_docs.get(metric, "")
        rows.append(f"<tr{css}><th><code>{_esc(metric)}</code></th>{cells}<td>{_esc(doc)}</td></tr>")
    return (
        '<div class="scroll"><table class="metrics">'
        f"<thead><tr><th>metric</th>{head}<th>definition</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


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


def sample_users(tags: pd.DataFrame, n: int) -> list[str]:
    """The first `n` user ids over all variants, so every variant's sample shows the same users
    and they can be read side by side."""
    return sorted({str(u) for u in tags["user_id"].dropna()})[:n]


def _samples_html(data: ReportData, variants: Sequence[Variant]) -> str:
    tagged = [v for v in variants if not _of_variant(data.tags, v).empty]
    if not tagged:
        return '<p class="na">Not available: no tags.</p>'
    users = sample_users(data.tags, data.sample_users)
    return "\n".join(_variant_sample_html(data, v, users) for v in tagged)


def _variant_sample_html(data: ReportData, variant: Variant, users: Sequence[str]) -> str:
    tags = _of_variant(data.tags, variant)
    tags = tags.assign(user_id=tags["user_id"].astype(str)).sort_values(["user_id", "rank"], kind="stable")
    by_user = {str(u): g for u, g in tags.groupby("user_id", sort=False)}
    rows = []
    for user in users:
        group = by_user.get(user)
        if group is None:
            cell = f'<span class="muted">{MISSING} no tags</span>'
        else:
            items = "".join(
                f'<li><span class="tag">{_esc(t.tag)}</span>'
                f'<span class="cat">{_category_text(t.category)}</span></li>'
                for t in group.head(data.sample_tags_per_user).itertuples(index=False)
            )
            more = len(group) - data.sample_tags_per_user
            cell = f'<ol class="tags">{items}</ol>' + (
                f'<span class="muted">+{more} more</span>' if more > 0 else ""
            )
        rows.append(f"<tr><th><code>{_esc(user)}</code></th><td>{cell}</td></tr>")
    return (
        f'<details open><summary>{_esc(variant.label)} <span class="muted">'
        f"({tags['user_id'].nunique():,} users, {len(tags):,} tags)</span></summary>"
        f'<table class="samples"><thead><tr><th>user</th><th>tags by rank (category)</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></details>"
    )


def _category_text(category: object) -> str:
    return _esc(category) if isinstance(category, str) else MISSING


def _notes_html(notes: Sequence[str]) -> str:
    if not notes:
        return '<p class="muted">No notes.</p>'
    return "<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in notes) + "</ul>"


# No network at all: only inline styles and data: images may load, and no script may run.
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
