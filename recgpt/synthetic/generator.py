"""Deterministic synthetic marketplace: catalog, users with planted personas, behaviour sequences
whose demand follows seasons and festivals, environment signals, and a few malformed rows.

Every user is generated from its own seed (seed, user index), so any partitioning of the users
across Spark tasks yields the same rows; the catalog and signals are small and built once.
"""

from __future__ import annotations

import datetime as _dt
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from recgpt.calendar import Calendar
from recgpt.rundate import RunDate
from recgpt.synthetic.world import BRANDS, CATEGORIES, PERSONAS, Category
from recgpt.tables import UTC_TS

COLOURS = ("black", "navy", "grey", "olive", "sand", "burgundy", "white", "sky blue", "forest green")
WEATHER_BY_SEASON = {
    "spring": ("mild", "showers", "windy", "sunny"),
    "summer": ("hot", "heatwave", "thunderstorms", "sunny"),
    "autumn": ("cooling", "crisp", "rainy", "windy"),
    "winter": ("cold", "snow", "freezing", "overcast"),
}
# Session shape: probabilities of each step within one shopping session.
P_SEARCH, P_FAV, P_CART, P_NOISE = 0.35, 0.12, 0.15, 0.12
# Purchases follow a cart most of the time; some are direct buys. A third of purchases get a review.
P_BUY_AFTER_CART, P_BUY_DIRECT, P_REVIEW = 0.5, 0.04, 0.35


@dataclass(frozen=True)
class SyntheticSpec:
    run_dt: RunDate
    seed: int = 7
    users: int = 400
    items: int = 3000
    history_days: int = 400
    holdout_days: int = 14
    behaviors_per_user: int = 120
    max_personas: int = 3
    dirty_fraction: float = 0.0
    regions: tuple[str, ...] = ("north-cn",)

    @classmethod
    def from_config(cls, data_cfg: Any, run_dt: RunDate) -> SyntheticSpec:
        return cls(
            run_dt=run_dt,
            seed=int(data_cfg.seed),
            users=int(data_cfg.users),
            items=int(data_cfg["items"]),
            history_days=int(data_cfg.history_days),
            holdout_days=int(data_cfg.holdout_days),
            behaviors_per_user=int(data_cfg.behaviors_per_user),
            max_personas=int(data_cfg.max_personas),
            dirty_fraction=float(data_cfg.dirty_fraction),
            regions=tuple(str(r) for r in data_cfg.regions),
        )

    @property
    def start(self) -> _dt.date:
        """First day generated: `history_days` before the run date."""
        return self.run_dt.minus(self.history_days).day

    @property
    def end(self) -> _dt.date:
        """Last day generated (inclusive): the end of the held-out window."""
        last = self.run_dt.plus(self.holdout_days - 1) if self.holdout_days else self.run_dt.minus(1)
        return last.day


def user_id(index: int) -> str:
    return f"u{index:08d}"


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng([k & 0xFFFFFFFF for k in keys])


def _stable(text: str) -> int:
    return zlib.crc32(text.encode())


# -- catalog ----------------------------------------------------------------------------------


def make_catalog(spec: SyntheticSpec) -> pa.Table:
    rng = _rng(spec.seed, 1)
    n_cat = len(CATEGORIES)
    cat_idx = np.arange(spec.items) % n_cat
    rng.shuffle(cat_idx)
    rows: dict[str, list[Any]] = {
        k: [] for k in ("item_id", "title", "category", "category_path", "brand", "price")
    }
    for i, ci in enumerate(cat_idx):
        cat = CATEGORIES[int(ci)]
        mods = rng.choice(len(cat.modifiers), size=2, replace=False)
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        core = cat.cores[int(rng.integers(len(cat.cores)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        title = f"{brand} {cat.modifiers[mods[0]]} {cat.modifiers[mods[1]]} {core}, {colour}"
        lo, hi = cat.price
        rows["item_id"].append(f"i{i:07d}")
        rows["title"].append(title)
        rows["category"].append(cat.name)
        rows["category_path"].append(" > ".join(cat.path))
        rows["brand"].append(brand)
        rows["price"].append(round(float(rng.uniform(lo, hi)), 2))
    return pa.table(rows)


@dataclass(frozen=True)
class CatalogIndex:
    """Item ids by category with a Zipf-like popularity, for fast per-user sampling."""

    by_category: dict[str, np.ndarray]
    popularity: dict[str, np.ndarray]
    titles: dict[str, str]

    @classmethod
    def build(cls, catalog: pa.Table) -> CatalogIndex:
        ids = catalog.column("item_id").to_pylist()
        cats = catalog.column("category").to_pylist()
        titles = dict(zip(ids, catalog.column("title").to_pylist(), strict=True))
        by_cat: dict[str, list[str]] = {}
        for item, cat in zip(ids, cats, strict=True):
            by_cat.setdefault(cat, []).append(item)
        by_category = {c: np.array(v) for c, v in by_cat.items()}
        popularity = {}
        for c, v in by_category.items():
            w = 1.0 / np.arange(1, len(v) + 1) ** 0.8
            popularity[c] = w / w.sum()
        return cls(by_category, popularity, titles)


# -- demand model -----------------------------------------------------------------------------


def demand_multiplier(cat: Category, season: str, festivals: Sequence[str]) -> float:
    m = cat.seasons.get(season, 1.0)
    if any(f in cat.festivals for f in festivals):
        m *= 3.0
    return m


@dataclass(frozen=True)
class DayContext:
    season: str
    festivals: tuple[str, ...]


def day_contexts(spec: SyntheticSpec, calendar: Calendar) -> dict[str, list[DayContext]]:
    days = calendar.days(spec.start, spec.end)
    return {
        r: [DayContext(calendar.season(d, r), tuple(calendar.festivals_on(d, r))) for d in days]
        for r in spec.regions
    }


# -- users and behaviours ---------------------------------------------------------------------


def make_users(spec: SyntheticSpec, indices: Sequence[int]) -> tuple[pa.Table, pa.Table]:
    """Users and their planted personas (the ground truth)."""
    users: dict[str, list[Any]] = {"user_id": [], "age": [], "gender": [], "region": []}
    planted: dict[str, list[Any]] = {
        "user_id": [],
        "persona": [],
        "description": [],
        "weight": [],
        "categories": [],
    }
    for idx in indices:
        profile, personas = _user_profile(spec, int(idx))
        for k, v in profile.items():
            users[k].append(v)
        for p, w in personas:
            planted["user_id"].append(profile["user_id"])
            planted["persona"].append(p.name)
            planted["description"].append(p.description)
            planted["weight"].append(round(float(w), 4))
            planted["categories"].append(sorted(p.categories))
    return (
        pa.table(
            users,
            schema=pa.schema(
                [
                    ("user_id", pa.string()),
                    ("age", pa.int32()),
                    ("gender", pa.string()),
                    ("region", pa.string()),
                ]
            ),
        ),
        pa.table(
            planted,
            schema=pa.schema(
                [
                    ("user_id", pa.string()),
                    ("persona", pa.string()),
                    ("description", pa.string()),
                    ("weight", pa.float64()),
                    ("categories", pa.list_(pa.string())),
                ]
            ),
        ),
    )


def _user_profile(spec: SyntheticSpec, idx: int) -> tuple[dict[str, Any], list[tuple[Any, float]]]:
    rng = _rng(spec.seed, 2, idx)
    k = int(rng.integers(1, spec.max_personas + 1))
    chosen = rng.choice(len(PERSONAS), size=k, replace=False)
    weights = rng.dirichlet(np.full(k, 2.0))
    profile = {
        "user_id": user_id(idx),
        "age": int(rng.integers(18, 66)),
        "gender": "F" if rng.random() < 0.55 else "M",
        "region": spec.regions[int(rng.integers(len(spec.regions)))],
    }
    return profile, [(PERSONAS[int(c)], float(w)) for c, w in zip(chosen, weights, strict=True)]


BEHAVIOR_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("behavior", pa.string()),
        ("query", pa.string()),
        ("ts", UTC_TS),
        ("rating", pa.float64()),
    ]
)


def make_behaviors(
    spec: SyntheticSpec,
    indices: Sequence[int],
    catalog: CatalogIndex,
    contexts: dict[str, list[DayContext]],
) -> pa.Table:
    cols: dict[str, list[Any]] = {n: [] for n in BEHAVIOR_SCHEMA.names}
    start = _dt.datetime.combine(spec.start, _dt.time(), tzinfo=_dt.UTC)
    n_days = (spec.end - spec.start).days + 1
    cat_names = list(catalog.by_category)
    by_name = {c.name: c for c in CATEGORIES}
    for idx in indices:
        profile, personas = _user_profile(spec, int(idx))
        uid, region = profile["user_id"], profile["region"]
        rng = _rng(spec.seed, 3, int(idx))
        target = int(rng.poisson(spec.behaviors_per_user))
        ctx = contexts[region]
        p_weights = np.array([w for _, w in personas])
        emitted = 0
        while emitted < target:
            day = int(rng.integers(n_days))
            season, fests = ctx[day].season, ctx[day].festivals
            if rng.random() < P_NOISE:
                cat = by_name[cat_names[int(rng.integers(len(cat_names)))]]
            else:
                persona = personas[int(rng.choice(len(personas), p=p_weights))][0]
                names = list(persona.categories)
                w = np.array(
                    [persona.categories[n] * demand_multiplier(by_name[n], season, fests) for n in names]
                )
                cat = by_name[names[int(rng.choice(len(names), p=w / w.sum()))]]
            when = start + _dt.timedelta(days=day, seconds=int(rng.integers(7 * 3600, 23 * 3600)))
            emitted += _session(rng, cols, uid, cat, when, catalog)
    table = pa.table(cols, schema=BEHAVIOR_SCHEMA)
    if spec.dirty_fraction > 0:
        table = _corrupt(spec, table)
    return table


def _session(
    rng: np.random.Generator,
    cols: dict[str, list[Any]],
    uid: str,
    cat: Category,
    when: _dt.datetime,
    catalog: CatalogIndex,
) -> int:
    items, pop = catalog.by_category[cat.name], catalog.popularity[cat.name]
    n = 0

    def emit(item: str | None, behavior: str, query: str | None = None, rating: float | None = None) -> None:
        nonlocal n, when
        cols["user_id"].append(uid)
        cols["item_id"].append(item)
        cols["behavior"].append(behavior)
        cols["query"].append(query)
        cols["ts"].append(when)
        cols["rating"].append(rating)
        when = when + _dt.timedelta(seconds=int(rng.integers(20, 600)))
        n += 1

    if rng.random() < P_SEARCH:
        mod = cat.modifiers[int(rng.integers(len(cat.modifiers)))]
        emit(None, "search", f"{mod} {cat.cores[int(rng.integers(len(cat.cores)))]}")
    for item in rng.choice(items, size=int(rng.integers(1, 5)), p=pop):
        emit(str(item), "click" if rng.random() < 0.4 else "view")
    item = str(rng.choice(items, p=pop))
    if rng.random() < P_FAV:
        emit(item, "fav")
    if rng.random() < P_CART:
        emit(item, "cart")
        if rng.random() < P_BUY_AFTER_CART:
            emit(item, "purchase")
            if rng.random() < P_REVIEW:
                emit(item, "review", rating=float(rng.choice([3.0, 4.0, 4.0, 5.0, 5.0, 5.0])))
    elif rng.random() < P_BUY_DIRECT:
        emit(item, "purchase")
    return n


def _corrupt(spec: SyntheticSpec, table: pa.Table) -> pa.Table:
    """Make a seeded share of rows malformed the ways real logs are: unknown behaviour types,
    missing ids, missing or far-future timestamps, references to items that do not exist."""
    n = table.num_rows
    if n == 0:
        return table
    first_user = table.column("user_id")[0].as_py()
    rng = _rng(spec.seed, 4, _stable(first_user))
    bad = np.flatnonzero(rng.random(n) < spec.dirty_fraction)
    if not len(bad):
        return table
    cols = {name: table.column(name).to_pylist() for name in table.column_names}
    far_future = _dt.datetime(2999, 1, 1, tzinfo=_dt.UTC)
    for i in bad:
        kind = int(rng.integers(5))
        if kind == 0:
            cols["behavior"][i] = "clik"
        elif kind == 1:
            cols["user_id"][i] = None
        elif kind == 2:
            cols["ts"][i] = None
        elif kind == 3:
            cols["ts"][i] = far_future
        else:
            cols["item_id"][i] = "i9999999x"
            cols["behavior"][i] = "view"
    return pa.table(cols, schema=table.schema)


# -- environment signals ----------------------------------------------------------------------


def make_env_signals(spec: SyntheticSpec, calendar: Calendar) -> pa.Table:
    rows: dict[str, list[Any]] = {
        "dt": [],
        "region": [],
        "season": [],
        "weather": [],
        "festivals": [],
        "trends": [],
    }
    for region, ctxs in day_contexts(spec, calendar).items():
        for offset, ctx in enumerate(ctxs):
            day = spec.start + _dt.timedelta(days=offset)
            rng = _rng(spec.seed, 5, _stable(region), day.toordinal())
            options = WEATHER_BY_SEASON[ctx.season]
            ranked = sorted(CATEGORIES, key=lambda c: -demand_multiplier(c, ctx.season, ctx.festivals))
            rows["dt"].append(day)
            rows["region"].append(region)
            rows["season"].append(ctx.season)
            rows["weather"].append(options[int(rng.integers(len(options)))])
            rows["festivals"].append(list(ctx.festivals))
            rows["trends"].append([c.name for c in ranked[:3]])
    return pa.table(
        rows,
        schema=pa.schema(
            [
                ("dt", pa.date32()),
                ("region", pa.string()),
                ("season", pa.string()),
                ("weather", pa.string()),
                ("festivals", pa.list_(pa.string())),
                ("trends", pa.list_(pa.string())),
            ]
        ),
    )
