"""The report's data shaping: checks an evaluation's metric, tag and category frames and turns them
into what the page shows (variants in display order, one value per cell, shares, formatted numbers)."""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pandas as pd

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
    # pipeline, context_mode, other, metric, difference, ci95_low, ci95_high, users: paired
    # differences (eval_comparisons); None or empty: no comparison section.
    comparisons: pd.DataFrame | None = None
    # pipeline, context_mode, user_id, tag_rank, tag, item_id, explanation_mode, explanation,
    # style_guide, reason: every mode's line (or failure reason) for a sample of pairs; None or
    # empty: no explanation section.
    explanations: pd.DataFrame | None = None
    # pipeline, context_mode, user_id, tag_rank, kind (tag or an explanation mode), text, grade,
    # failing ("dimension: reason; ..."): the judge's verdicts on a sample; None or empty: no
    # judged section.
    judged: pd.DataFrame | None = None


class Variant(NamedTuple):
    pipeline: str
    context_mode: str

    @property
    def label(self) -> str:
        return f"{self.pipeline} · {self.context_mode}"


def check_columns(data: ReportData) -> None:
    """Raises ReportDataError naming the first frame that lacks a column the page reads."""
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


def models_of(metrics: pd.DataFrame) -> dict[Variant, list[str]]:
    """The models each variant's metrics were computed with, for the page header."""
    models: dict[Variant, list[str]] = {}
    for (p, m), group in metrics.dropna(subset=["model"]).groupby(["pipeline", "context_mode"]):
        models[Variant(str(p), str(m))] = sorted({str(x) for x in group["model"]})
    return models


def of_variant(frame: pd.DataFrame, variant: Variant) -> pd.DataFrame:
    mask = (frame["pipeline"] == variant.pipeline) & (frame["context_mode"] == variant.context_mode)
    return frame[mask]


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


def metric_intervals(metrics: pd.DataFrame) -> dict[str, dict[Variant, tuple[float, float]]]:
    """metric -> variant -> (low, high) of the rows that carry a 95% interval."""
    if "ci95_low" not in metrics.columns or "ci95_high" not in metrics.columns:
        return {}
    out: dict[str, dict[Variant, tuple[float, float]]] = {}
    for row in metrics.itertuples(index=False):
        low, high = _as_float(row.ci95_low), _as_float(row.ci95_high)
        if not (math.isnan(low) or math.isnan(high)):
            variant = Variant(str(row.pipeline), str(row.context_mode))
            out.setdefault(str(row.metric), {})[variant] = (low, high)
    return out


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_order(metrics: Iterable[str], headline: Sequence[str]) -> list[str]:
    """Headline metrics first in their given order (even when missing, so a gap shows), then the
    rest alphabetically."""
    head = list(dict.fromkeys(headline))
    return head + sorted(set(metrics) - set(head))


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


def words_per_tag(tags: pd.Series) -> pd.Series:
    return tags.dropna().astype(str).map(lambda tag: len(tag.split()))


def category_shares(frame: pd.DataFrame) -> pd.Series:
    """Each category's share of a (category, count) frame's total count."""
    counts = frame.dropna(subset=["category"]).groupby("category")["count"].sum()
    total = counts.sum()
    return counts / total if total > 0 else counts.astype(float)


def tag_category_shares(tags: pd.DataFrame) -> tuple[pd.Series, float]:
    """(share of the variant's categorised tags per category, share of its tags without one)."""
    if tags.empty:
        return pd.Series(dtype=float), 0.0
    known = tags["category"].dropna()
    return known.value_counts(normalize=True), 1.0 - len(known) / len(tags)


def sample_users(tags: pd.DataFrame, n: int) -> list[str]:
    """The first `n` user ids over all variants, so every variant's sample shows the same users
    and they can be read side by side."""
    return sorted({str(u) for u in tags["user_id"].dropna()})[:n]
