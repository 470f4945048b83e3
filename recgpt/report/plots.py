"""The report's figures (tag length, category distribution, V2 vs V1 and hybrid vs text on the headline
metrics), drawn with matplotlib outside pyplot and rendered to PNG bytes for the page to inline."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter

from recgpt.report.data import (
    ReportData,
    Variant,
    category_shares,
    of_variant,
    tag_category_shares,
    words_per_tag,
)

_DPI = 100
_WIDTH_IN = 7.0
_MAX_WORDS_BIN = 15  # longer tags share the last bar ("15+")
_TOP_CATEGORIES = 15
_LABEL_CHARS = 32
_HISTORY_COLOR, _HELDOUT_COLOR = "#b0b0b0", "#555555"
_VARIANT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")

# One bar series of the category plot: legend label, share per category, colour.
_CategoryBars = tuple[str, pd.Series, str]


@dataclass(frozen=True)
class Plot:
    """A rendered figure, or the reason there is none."""

    title: str
    caption: str
    png: bytes | None = None
    missing: str = ""


def report_plots(
    data: ReportData,
    variants: Sequence[Variant],
    values: Mapping[str, Mapping[Variant, float]],
    shares: Collection[str],
) -> list[Plot]:
    """The page's plots in page order; one without data says why instead."""
    headline = _plotted_headline(data.headline, shares)
    return [
        tag_length_plot(data.tags, variants),
        category_plot(data.tags, data.history_categories, data.heldout_categories, variants),
        v2_vs_v1_plot(variants, values, headline),
        hybrid_vs_text_plot(variants, values, headline),
        explanation_plot(variants, values),
    ]


def _plotted_headline(headline: Sequence[str], shares: Collection[str]) -> list[str]:
    # The comparison charts share one percentage axis, so a count among the headline metrics
    # (tokens per user) would flatten every bar: it stays in the table only.
    return [m for m in dict.fromkeys(headline) if m in shares]


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
    lengths = {v: words_per_tag(of_variant(tags, v)["tag"]) for v in variants}
    lengths = {v: s for v, s in lengths.items() if not s.empty}
    if not lengths:
        return Plot(title, caption, missing="no tags")
    return Plot(title, caption, _tag_length_png(lengths, variants))


def _tag_length_png(lengths: Mapping[Variant, pd.Series], variants: Sequence[Variant]) -> bytes:
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
    return _png(fig)


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
    series, uncategorised = _category_bars(tags, history, heldout, variants)
    caption = (
        f"Top {_TOP_CATEGORIES} categories by history + held-out share. Tag shares are of the tags "
        "with a category" + (f"; tags without one: {', '.join(uncategorised)}." if uncategorised else ".")
    )
    top = _top_categories(series)
    if not top:
        return Plot(title, caption, missing="no category counts and no categorised tags")
    return Plot(title, caption, _category_png(top, series))


def _category_bars(
    tags: pd.DataFrame, history: pd.DataFrame, heldout: pd.DataFrame, variants: Sequence[Variant]
) -> tuple[list[_CategoryBars], list[str]]:
    """(history, held-out and every tagged variant's bars; each variant's share of uncategorised
    tags, for the caption)."""
    series: list[_CategoryBars] = [
        ("history (before dt)", category_shares(history), _HISTORY_COLOR),
        ("held-out window", category_shares(heldout), _HELDOUT_COLOR),
    ]
    uncategorised = []
    for variant in variants:
        shares, none = tag_category_shares(of_variant(tags, variant))
        if not shares.empty or none > 0:
            series.append((f"tags {variant.label}", shares, _color(variants, variant)))
        if none > 0:
            uncategorised.append(f"{variant.label}: {none:.1%}")
    return series, uncategorised


def _top_categories(series: Sequence[_CategoryBars]) -> list[str]:
    """The categories that weigh most in history plus held-out, or in the tags when neither is known."""
    reference = series[0][1].add(series[1][1], fill_value=0.0)
    if reference.empty and len(series) > 2:
        reference = pd.concat([s for _, s, _ in series[2:]]).groupby(level=0).sum()
    return [str(c) for c in reference.sort_values(ascending=False, kind="stable").index[:_TOP_CATEGORIES]]


def _category_png(top: list[str], series: Sequence[_CategoryBars]) -> bytes:
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
    return _png(fig)


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
    return Plot(title, caption, _comparison_png(title, panels, values, metrics, variants))


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
    return Plot(title, caption, _comparison_png(title, panels, values, metrics, variants))


EXPLANATION_MODES = ("meta", "single", "template")


def explanation_plot(variants: Sequence[Variant], values: Mapping[str, Mapping[Variant, float]]) -> Plot:
    """Diversity and pass rate of the explanations per mode, one bar per explained variant."""
    title = "Explanations by mode"
    caption = (
        "Diversity: 1 - mean ROUGE-L F between lines of the same item for different users (the "
        "paper's measure); pass rate: lines that passed every rule. Bar labels in %."
    )
    panels = [
        (name, [f"explain_{name}_{m}" for m in EXPLANATION_MODES]) for name in ("diversity", "pass_rate")
    ]
    shown = [v for v in variants if _has_values(values, [m for _, ms in panels for m in ms], [v])]
    if not shown:
        return Plot(title, caption, missing="no explanations for this date")
    fig = _figure(0.6 + 2.4 * len(panels))
    fig.suptitle(title, fontsize=11)
    width = 0.8 / len(shown)
    for row, (name, metrics) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, row + 1)
        for i, variant in enumerate(shown):
            heights = [values.get(m, {}).get(variant, math.nan) for m in metrics]
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(metrics))]
            bars = ax.bar(xs, heights, width, label=_plain(variant.label), color=_color(variants, variant))
            ax.bar_label(bars, ["" if math.isnan(h) else f"{h * 100:.1f}" for h in heights], fontsize=7)
        ax.set_xticks(range(len(EXPLANATION_MODES)), list(EXPLANATION_MODES), fontsize=8)
        ax.set_ylim(0, 1.15)
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1, decimals=0))
        ax.set(title=name.replace("_", " "), ylabel="share")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot(title, caption, _png(fig))


def _has_values(
    values: Mapping[str, Mapping[Variant, float]], metrics: Sequence[str], vs: Iterable[Variant]
) -> bool:
    return any(not math.isnan(values.get(m, {}).get(v, math.nan)) for m in metrics for v in vs)


def _comparison_png(
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
        _comparison_panel(ax, title, shown, values, metrics, colors, top)
    axes[-1].set_xlabel("headline metric")
    return _png(fig)


def _comparison_panel(
    ax: Axes,
    title: str,
    shown: Sequence[Variant],
    values: Mapping[str, Mapping[Variant, float]],
    metrics: Sequence[str],
    colors: Sequence[Variant],
    top: float,
) -> None:
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


def _tick(metric: str) -> str:
    """`recall_at_30_covisit` as two lines, so five metric names fit under a 7-inch axis."""
    return textwrap.fill(_plain(metric.replace("_", " ")), width=14)


def reward_curve_plot(curves: Mapping[str, Sequence[float]]) -> Plot:
    """Mean reward of each training step, one line per run (e.g. GRPO rewarded by CRS and by the
    weighted SUM on each dataset)."""
    title = "Mean reward per training step"
    drawn = {name: list(values) for name, values in curves.items() if values}
    if not drawn:
        return Plot(title, "", missing="no training run recorded a reward curve")
    caption = f"Each step's group mean of the shaped reward over its sampled answers: {', '.join(drawn)}."
    fig = _figure(3.2)
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, values) in enumerate(drawn.items()):
        steps = range(1, len(values) + 1)
        ax.plot(
            steps,
            values,
            marker="o",
            markersize=3,
            label=_plain(name),
            color=_VARIANT_COLORS[i % len(_VARIANT_COLORS)],
        )
    ax.set(title=title, xlabel="step", ylabel="mean reward")
    ax.title.set_fontsize(10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return Plot(title, caption, png=_png(fig))
