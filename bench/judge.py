"""Judge benchmark: the judge measured on a labelled set built without people, the way RecGPT-V2
builds its negatives, from the synthetic world's planted personas (ground truth nobody wrote
the judge against):

- tags: positives name a category of the persona they are judged for ("waterproof hiking
  boots" for the outdoor enthusiast); relevance negatives are another user's positive (in-batch
  shuffling, a user with no category in common); consistency negatives are the same user's tag
  of another of their personas (relevant to the history, not to this persona); validity
  negatives inject a catalog brand or a model number, copy a history title, or loop the tag's
  last word; specificity negatives are generic phrases.
- explanations: positives are lines written from the item's facts and the situation in several
  phrasings; negatives shuffle lines between users (relevance), change the price or an
  attribute (factuality), add an absolute claim, a phone number or a link (safety), cut,
  loop or pad the line (clarity), name another season or festival (timeliness), say nothing
  beyond the interest (informativeness) or read flat and off-putting (attractiveness).

Each case is labelled only on the dimensions its construction decides. Users are split in two:
thresholds of the embedding and LLM dimensions are calibrated on the first half, and every
figure is measured on the second half: per dimension accuracy and F1 of the defect class, beside
the trivial judge that passes everything; the grade confusion matrix (truth: B when a labelled
dimension is a defect, else S-or-A). With the headline judge's grades of the same cases it
trains the reward model (recgpt/judge/reward.py) listwise and pointwise on the same split, and
measures each one's pairwise ranking accuracy on the second half against those grades.
Writes bench/results/judge.json.

    make bench-judge
    python -m bench.judge --users 60 [--judge-llm qwen25_coder_1p5b_cpu]
"""

from __future__ import annotations

import argparse
import itertools
import random
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import binomtest

from bench.machine import write_result
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import ValidationContext
from recgpt.config import load_config, plain
from recgpt.embeddings import Embedder, item_text
from recgpt.explain.prompts import ItemFacts
from recgpt.explain.rules import ExplanationRules
from recgpt.explain.settings import ExplainSettings
from recgpt.judge.explanations import ExplanationCase, ExplanationJudge
from recgpt.judge.reward import (
    Encode,
    RewardExample,
    RewardSettings,
    explanation_example,
    tag_example,
    train_reward,
)
from recgpt.judge.settings import JudgeSettings
from recgpt.judge.tags import TagCase, TagJudge
from recgpt.judge.verdicts import EXPLANATION_DIMENSIONS, TAG_DIMENSIONS, Threshold, Verdict, grade
from recgpt.rundate import RunDate
from recgpt.synthetic.generator import SyntheticSpec, make_catalog, make_users
from recgpt.synthetic.world import CATEGORY_BY_NAME, PERSONA_BY_NAME

SEASONS = ("spring", "summer", "autumn", "winter")
GENERIC = (
    "everyday essentials",
    "popular products",
    "gift ideas",
    "daily necessities",
    "lifestyle items",
    "new arrivals",
    "great deals",
    "household goods",
    "trending picks",
    "useful things",
)
# Dimensions whose pass threshold is calibrated (the others are rules: exact, no threshold).
CALIBRATED = {
    "tag": {"relevance": "tag_relevance", "specificity": "tag_specificity", "consistency": "tag_consistency"},
    "explanation": {"relevance": "explanation_relevance", "attractiveness": "explanation_attractiveness"},
}


@dataclass
class Labelled:
    case: Any  # TagCase or ExplanationCase
    labels: dict[str, bool]  # dimension -> passes (only the dimensions the construction decides)
    kind: str
    user_index: int


@dataclass
class User:
    index: int
    user_id: str
    profile: str
    personas: list[tuple[str, str, list[str]]]  # name, description, categories
    history: list[dict[str, Any]]  # catalog rows
    season: str
    festival: str


def build_users(cfg: Any, n: int, seed: int) -> tuple[list[User], dict[str, list[dict[str, Any]]]]:
    spec = replace(SyntheticSpec.from_config(cfg.data, RunDate.parse(str(cfg.run.dt))), seed=seed)
    catalog = make_catalog(spec).to_pylist()
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in catalog:
        by_category[row["category"]].append(row)
    profiles, planted = make_users(spec, range(n))
    festivals = [str(f["name"]) for f in cfg.calendar.festivals]
    rng = random.Random(seed)
    users = []
    planted_rows = planted.to_pylist()
    for i, p in enumerate(profiles.to_pylist()):
        mine = [r for r in planted_rows if r["user_id"] == p["user_id"]]
        personas = [(r["persona"], r["description"], list(r["categories"])) for r in mine]
        weights = [r["weight"] for r in mine]
        history = []
        for _ in range(15):
            name = rng.choices([r["persona"] for r in mine], weights)[0]
            cats = PERSONA_BY_NAME[name].categories
            category = rng.choices(list(cats), list(cats.values()))[0]
            history.append(rng.choice(by_category[category]))
        users.append(
            User(
                i,
                p["user_id"],
                f"age {p['age']}, gender {p['gender']}, region {p['region']}",
                personas,
                history,
                rng.choice(SEASONS),
                rng.choice(festivals),
            )
        )
    return users, by_category


def _phrase(rng: random.Random, category: str) -> tuple[str, str, str]:
    """A "modifier core" interest of `category`, with the modifier and the core."""
    c = CATEGORY_BY_NAME[category]
    modifier, core = rng.choice(c.modifiers), rng.choice(c.cores)
    return f"{modifier} {core}", modifier, core


def _disjoint(users: Sequence[User], user: User, rng: random.Random) -> User:
    mine = {c for _, _, cats in user.personas for c in cats}
    others = [u for u in users if not mine & {c for _, _, cats in u.personas for c in cats}]
    return rng.choice(others or [u for u in users if u is not user])


def seen(u: User) -> Counter[str]:
    """The categories of the user's history, with their counts."""
    return Counter(r["category"] for r in u.history)


def primary(u: User) -> tuple[str, str, list[str]]:
    """The persona the user's history shows most: the one tags are judged for."""
    counts = seen(u)
    return max(u.personas, key=lambda p: sum(counts[c] for c in p[2]))


def tag_set(users: Sequence[User], brands: Sequence[str], seed: int) -> list[Labelled]:
    """Relevance means "about the history": a positive names a category of the primary persona
    that the history holds; the other persona's tag too (relevant, but not this persona's)."""
    rng = random.Random(seed + 1)
    out: list[Labelled] = []
    positives: dict[int, str] = {}
    for u in users:
        _, _, cats = primary(u)
        positives[u.index] = _phrase(rng, rng.choice(sorted(set(cats) & set(seen(u)))))[0]
    for u in users:
        name, description, cats = primary(u)
        history = tuple(r["title"] for r in u.history)
        base = TagCase(f"{u.user_id}:t", u.user_id, "", f"{name}: {description}", u.profile, history)
        good = positives[u.index]
        every = dict.fromkeys(TAG_DIMENSIONS, True)

        def add(tag: str, labels: dict[str, bool], kind: str, user: User = u, case: TagCase = base) -> None:
            key = f"{case.key}{len(out)}"
            out.append(Labelled(replace(case, key=key, tag=tag), labels, kind, user.index))

        add(good, every, "positive")
        other = positives[_disjoint(users, u, rng).index]
        add(other, {"relevance": False, "consistency": False, "validity": True}, "shuffled")
        elsewhere = sorted({c for p in u.personas for c in p[2] if c not in cats} & set(seen(u)))
        if elsewhere:
            add(
                _phrase(rng, rng.choice(elsewhere))[0],
                {"relevance": True, "consistency": False},
                "other_persona",
            )
        add(f"{rng.choice(brands)} {good}", {"validity": False, "relevance": True}, "brand")
        add(
            f"{good} {rng.choice('xkgt')}{rng.randint(10, 999)}",
            {"validity": False, "relevance": True},
            "model_number",
        )
        title = rng.choice(u.history)["title"]
        copied = title.split(" ", 1)[1]  # the title without its leading brand
        add(copied, {"validity": False, "relevance": True}, "copied_title")
        add(f"{good} {good.split()[-1]}", {"validity": False}, "looped")
        add(rng.choice(GENERIC), {"specificity": False, "relevance": False}, "generic")
    return out


POSITIVE_LINES = (
    "Your interest in {tag} led us to this {m1} {core} from {brand}, ready for {season} days.",
    "Since you enjoy {tag}, this {m1} {core} at {price} could be a handy pick this {season}.",
    "Here is a {m1}, {m2} {core} by {brand} that suits your love of {tag}.",
    "For fans of {tag}, the {brand} {core} brings a {m2} design at {price}.",
    "This {core} from {brand} is {m1} and {m2}, a thoughtful match for your {tag} interest.",
    "Planning ahead of {festival}? This {m1} {core} fits your taste for {tag} nicely.",
)
FLAT_LINES = (
    "This {core} exists and is sold in this shop, like many other things are.",
    "You may not need this {core}, but it is listed here anyway, as usual.",
    "Another {core}. It is one of the items. There is a listing for it.",
)


def explanation_set(
    users: Sequence[User], by_category: dict[str, list[dict[str, Any]]], seed: int
) -> list[Labelled]:
    rng = random.Random(seed + 2)
    made: dict[int, tuple[ExplanationCase, dict[str, str]]] = {}
    for u in users:
        _, _, cats = u.personas[0]
        category = rng.choice(cats)
        tag, _, _ = _phrase(rng, category)
        row = rng.choice(by_category[category])
        item = ItemFacts(
            row["item_id"], row["title"], row["category"], row["category_path"], row["brand"], row["price"]
        )
        words = row["title"].split(", ")[0].split()
        modifiers = [m for m in CATEGORY_BY_NAME[category].modifiers if m in row["title"]]
        core = next(c for c in CATEGORY_BY_NAME[category].cores if c in row["title"])
        fill = {
            "tag": tag,
            "m1": modifiers[0] if modifiers else words[1],
            "m2": modifiers[-1] if modifiers else words[2],
            "core": core,
            "brand": row["brand"],
            "price": f"{row['price']:.2f}",
            "season": u.season,
            "festival": u.festival.replace("-", " "),
        }
        situation = {"season": u.season, "festivals": [u.festival], "weather": "mild", "trends": []}
        pattern = POSITIVE_LINES[u.index % len(POSITIVE_LINES)]
        text = pattern.format(**fill)
        made[u.index] = (ExplanationCase(f"{u.user_id}:e", u.user_id, tag, item, text, situation), fill)
    out: list[Labelled] = []
    every = dict.fromkeys(EXPLANATION_DIMENSIONS, True)
    for u in users:
        case, fill = made[u.index]

        def add(
            text: str, labels: dict[str, bool], kind: str, user: User = u, base: ExplanationCase = case
        ) -> None:
            out.append(
                Labelled(replace(base, key=f"{base.key}{len(out)}", text=text), labels, kind, user.index)
            )

        add(case.text, every, "positive")
        add(made[_disjoint(users, u, rng).index][0].text, {"relevance": False}, "shuffled")
        if fill["price"] in case.text:
            wrong = f"{float(fill['price']) + rng.choice([5, 12.5, 30]):.2f}"
            add(
                case.text.replace(fill["price"], wrong),
                {"factuality": False, "relevance": True},
                "changed_price",
            )
        else:
            others = [m for c in CATEGORY_BY_NAME.values() for m in c.modifiers if m not in case.item.title]
            add(
                case.text.replace(fill["m1"], rng.choice(others), 1),
                {"factuality": False},
                "changed_attribute",
            )
        unsafe = rng.choice(
            (
                lambda t: t.rstrip(".") + ", the best you can buy, guaranteed.",
                lambda t: t.rstrip(".") + ". Call 555 013 2447 to order.",
                lambda t: t.rstrip(".") + ", see www.deals-now.shop for more.",
            )
        )
        add(unsafe(case.text), {"safety": False}, "unsafe")
        core = fill["core"]
        unclear = (
            " ".join(case.text.split()[: max(4, len(case.text.split()) * 3 // 5)]).rstrip(",.?"),
            case.text.replace(core, f"{core} {core} {core} {core}"),
            case.text.rstrip(".") + ", " + ", ".join(["and also more things to see"] * 4) + ".",
        )
        add(rng.choice(unclear), {"clarity": False}, "unclear")
        other_seasons = [s for s in SEASONS if s != u.season]
        add(
            case.text.rstrip(".") + f", just right for {rng.choice(other_seasons)} weekends.",
            {"timeliness": False},
            "untimely",
        )
        add(
            f"We think this pick suits your interest in {fill['tag']} very well indeed.",
            {"informativeness": False, "safety": True},
            "uninformative",
        )
        add(rng.choice(FLAT_LINES).format(**fill), {"attractiveness": False}, "flat")
    return out


def split(
    cases: Sequence[Labelled], verdicts: Sequence[list[Verdict]], n_users: int
) -> tuple[list[tuple[Labelled, list[Verdict]]], list[tuple[Labelled, list[Verdict]]]]:
    """(calibration, evaluation): the cases of the first half of the users, and of the rest."""
    pairs = list(zip(cases, verdicts, strict=True))
    half = n_users // 2
    return [p for p in pairs if p[0].user_index < half], [p for p in pairs if p[0].user_index >= half]


def calibrate(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """The pass threshold with the best accuracy on (score, passes) pairs, midway between
    neighbouring scores; None without both classes."""
    if len(set(labels)) < 2:
        return None
    order = sorted(set(scores))
    candidates = [order[0] - 1e-6] + [(a + b) / 2 for a, b in itertools.pairwise(order)] + [order[-1] + 1e-6]
    best = max(
        candidates, key=lambda t: (sum((s >= t) == y for s, y in zip(scores, labels, strict=True)), -abs(t))
    )
    return float(best)


def dimension_figures(
    verdicts: Sequence[Sequence[Verdict]], cases: Sequence[Labelled], dims: Sequence[str]
) -> dict[str, Any]:
    """Per dimension: accuracy and defect F1 of the judge and of always-pass, on the cases
    labelled for it (an unjudged verdict counts as a pass: the reviewer never fails on one)."""
    out: dict[str, Any] = {}
    for d, name in enumerate(dims):
        pairs = [
            (v[d].passed is not False, c.labels[name])
            for v, c in zip(verdicts, cases, strict=True)
            if name in c.labels
        ]
        if not pairs:
            continue
        unjudged = sum(v[d].passed is None for v, c in zip(verdicts, cases, strict=True) if name in c.labels)
        out[name] = {
            "cases": len(pairs),
            "defects": sum(not y for _, y in pairs),
            "judged_by": str(verdicts[0][d].judged_by),
            "unjudged": unjudged,
            "judge": _scores(pairs),
            "always_pass": _scores([(True, y) for _, y in pairs]),
        }
        out[name]["accuracy_gain"] = round(
            out[name]["judge"]["accuracy"] - out[name]["always_pass"]["accuracy"], 4
        )
    return out


def accuracy_interval(correct: int, cases: int) -> list[float]:
    """The 95% Wilson interval of an accuracy of `correct` out of `cases`."""
    ci = binomtest(correct, cases).proportion_ci(confidence_level=0.95, method="wilson")
    return [round(float(ci.low), 4), round(float(ci.high), 4)]


def _scores(pairs: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    """Accuracy with its 95% interval, and precision/recall/F1 of detecting a defect (the
    judge's job)."""
    tp = sum(not p and not y for p, y in pairs)
    fp = sum(not p and y for p, y in pairs)
    fn = sum(p and not y for p, y in pairs)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    accuracy = sum(p == y for p, y in pairs) / len(pairs)
    out: dict[str, Any] = {
        k: round(v, 4)
        for k, v in (("accuracy", accuracy), ("precision", precision), ("recall", recall), ("f1", f1))
    }
    out["accuracy_ci95"] = accuracy_interval(sum(p == y for p, y in pairs), len(pairs))
    return out


def grade_figures(
    verdicts: Sequence[Sequence[Verdict]], cases: Sequence[Labelled], share: float
) -> dict[str, Any]:
    """Grade confusion: truth B (a labelled defect) or S/A, against the judge's S, A, B and the
    always-pass judge's (every dimension strongly passed: S)."""
    matrix: dict[str, Counter[str]] = {"B": Counter(), "S/A": Counter()}
    for v, c in zip(verdicts, cases, strict=True):
        truth = "S/A" if all(c.labels.values()) else "B"
        matrix[truth][grade(v, share)] += 1
    correct = matrix["B"]["B"] + matrix["S/A"]["S"] + matrix["S/A"]["A"]
    total = sum(sum(m.values()) for m in matrix.values())
    return {
        "confusion": {t: {g: matrix[t][g] for g in ("S", "A", "B")} for t in matrix},
        "accuracy_b_vs_not": round(correct / total, 4) if total else None,
        "always_pass_accuracy": round(sum(matrix["S/A"].values()) / total, 4) if total else None,
        "by_kind": None,
    }


def reward_figures(
    cases: Mapping[str, Sequence[Labelled]],
    verdicts: Mapping[str, Sequence[list[Verdict]]],
    n_users: int,
    encode: Encode,
    settings: RewardSettings,
    excellence_share: float,
) -> dict[str, Any]:
    """The reward model trained on the judge's grades of the labelled cases (`verdicts` per
    kind, in case order, graded by the senior reviewer), listwise and pointwise on the same
    features and steps, with the bench's split: the first half of the users trains, the second
    is held out. A list is one user's cases of one kind. Returns the held-out pairwise ranking
    accuracy of each objective and of the untrained cosine, with the pair counts."""
    examples: list[RewardExample] = []
    held: set[str] = set()
    for kind, labelled in cases.items():
        for item, judged in zip(labelled, verdicts[kind], strict=True):
            c, g = item.case, grade(judged, excellence_share)
            if kind == "tag":
                examples.append(tag_example(c.user_id, c.persona, c.history, c.tag, g))
            else:
                examples.append(explanation_example(c.user_id, c.tag, c.item, c.text, g))
        _, evaluation = split(labelled, verdicts[kind], n_users)
        held |= {item.case.user_id for item, _ in evaluation}
    m = train_reward(examples, settings, encode, holdout_users=held).metrics
    return {
        "grades": {g: sum(e.grade == g for e in examples) for g in ("S", "A", "B")},
        "train": m["train"],
        "holdout": m["holdout"],
        "holdout_pairwise_accuracy": m["holdout_pairwise_accuracy"],
        "holdout_by_kind": m["holdout_by_kind"],
        "settings": settings.as_dict(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = load_config(["run.stage=bench", *args.overrides])
    settings = JudgeSettings.from_config(plain(cfg.judge))
    users, by_category = build_users(cfg, args.users, args.seed)
    brands = sorted({r["brand"] for rows in by_category.values() for r in rows})
    embedder = Embedder(plain(cfg.embedding))
    started = time.perf_counter()
    centroids = []
    for rows in by_category.values():
        vectors = embedder.encode(
            [item_text(r["title"], r["category"], r["category_path"], r["brand"]) for r in rows[:40]]
        )
        mean = vectors.mean(axis=0)
        centroids.append(mean / np.linalg.norm(mean))
    agent = AgentSettings.from_config(plain(cfg.pipeline.agents))
    line_rules = ExplanationRules.for_run(ExplainSettings.from_config(plain(cfg.explain), "meta"), brands)
    festivals = [str(f["name"]) for f in cfg.calendar.festivals]
    cases = {
        "tag": tag_set(users, brands, args.seed),
        "explanation": explanation_set(users, by_category, args.seed),
    }
    result: dict[str, Any] = {
        "users": args.users,
        "seed": args.seed,
        "embedding_model": embedder.name,
        "labelled_cases": {k: len(v) for k, v in cases.items()},
        "judges": [],
    }
    reward_settings = RewardSettings.from_config(plain(cfg.reward))
    for model in args.judge_llm.split(","):
        engine, llm_name, engine_start = _engine(model, args.overrides)
        tag_judge = TagJudge(
            settings, ValidationContext.for_run(agent, brands), embedder.encode, np.array(centroids), engine
        )
        line_judge = ExplanationJudge(settings, line_rules, embedder.encode, festivals, engine)
        judged: dict[str, Any] = {"judge_model": llm_name, "engine_start_s": engine_start}
        verdicts_by_kind: dict[str, list[list[Verdict]]] = {}
        for kind, judge, dims in (
            ("tag", tag_judge.judge, TAG_DIMENSIONS),
            ("explanation", line_judge.judge, EXPLANATION_DIMENSIONS),
        ):
            t0 = time.perf_counter()
            verdicts = judge([c.case for c in cases[kind]])
            seconds = time.perf_counter() - t0
            verdicts_by_kind[kind] = verdicts
            judged[kind] = _measure(kind, cases[kind], verdicts, dims, settings, args.users)
            # Every case costs one judge-model call (one LLM dimension per kind) plus the rules
            # and the embeddings: the judge's cost per judged tag or line on this machine.
            judged[kind]["seconds"] = round(seconds, 1)
            judged[kind]["seconds_per_case"] = round(seconds / len(cases[kind]), 4)
        if engine is not None:
            engine.close()
        if not result["judges"]:  # the headline judge's grades train the reward model
            result["reward"] = {
                "judge_model": llm_name,
                **reward_figures(
                    cases,
                    verdicts_by_kind,
                    args.users,
                    embedder.encode,
                    reward_settings,
                    settings.excellence_share,
                ),
            }
        result["judges"].append(judged)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _measure(
    kind: str,
    cases: list[Labelled],
    verdicts: list[list[Verdict]],
    dims: Sequence[str],
    settings: JudgeSettings,
    n_users: int,
) -> dict[str, Any]:
    """Calibrate the scored dimensions' thresholds on the first half of the users, then measure
    the second half with them (and with the configured thresholds, for comparison)."""
    calibration, evaluation = split(cases, verdicts, n_users)
    calibrated: dict[str, float | None] = {}
    re_judged = [list(v) for _, v in evaluation]
    for name, field in CALIBRATED[kind].items():
        d = dims.index(name)
        pairs = [
            (score, c.labels[name])
            for c, v in calibration
            if name in c.labels and (score := v[d].score) is not None
        ]
        threshold = calibrate([s for s, _ in pairs], [y for _, y in pairs])
        calibrated[name] = None if threshold is None else round(threshold, 4)
        configured: Threshold = getattr(settings, field)
        if threshold is not None:
            strong = max(threshold, configured.strong)
            for row in re_judged:
                if (score := row[d].score) is not None:
                    row[d] = Threshold(threshold, strong).verdict(
                        name, score, row[d].judged_by, row[d].reason
                    )
    eval_cases = [c for c, _ in evaluation]
    kinds = Counter(c.kind for c in eval_cases)
    return {
        "cases": len(eval_cases),
        "calibration_cases": len(calibration),
        "kinds": dict(sorted(kinds.items())),
        "calibrated_pass_threshold": calibrated,
        "dimensions": dimension_figures(re_judged, eval_cases, dims),
        "dimensions_configured_thresholds": dimension_figures([v for _, v in evaluation], eval_cases, dims),
        "grades": grade_figures(re_judged, eval_cases, settings.excellence_share),
    }


def _engine(judge_llm: str | None, overrides: Sequence[str]) -> tuple[Any, str | None, float | None]:
    if judge_llm == "none":
        return None, None, None
    from recgpt.llm.engine import Engine
    from recgpt.llm.render import PromptRenderer
    from recgpt.llm.vllm_offline import VLLMOfflineBackend

    llm = plain(
        load_config(["run.stage=bench", *([f"llm={judge_llm}"] if judge_llm else []), *overrides]).llm
    )
    if not Path(str(llm["model_path"])).is_dir():
        raise SystemExit(
            f"judge model {judge_llm}: {llm['model_path']} is missing (`make models-large` prepares it)"
        )
    backend = VLLMOfflineBackend(llm)
    renderer = PromptRenderer(
        str(llm["model_path"]), int(llm["max_model_len"]), tokenizer_path=llm.get("tokenizer_path")
    )
    return Engine(backend, renderer), backend.model, round(backend.start_seconds, 1)


def report(result: dict[str, Any]) -> None:
    print(f"users: {result['users']} (half calibrates, half measured), cases {result['labelled_cases']}")
    for judged in result["judges"]:
        print(f"\n== judge model: {judged['judge_model']}")
        for kind in ("tag", "explanation"):
            r = judged[kind]
            print(f"{kind}s: {r['cases']} cases measured, {r['seconds_per_case']} s per case")
            print(
                f"  {'dimension':<16} {'by':<9} {'cases':>5} {'acc':>6} {'F1':>6} {'pass-all':>8} {'gain':>6}"
            )
            for name, d in r["dimensions"].items():
                judge, trivial = d["judge"], d["always_pass"]
                print(
                    f"  {name:<16} {d['judged_by']:<9} {d['cases']:>5} {judge['accuracy']:>6.3f} "
                    f"{judge['f1']:>6.3f} {trivial['accuracy']:>8.3f} {d['accuracy_gain']:>+6.3f}"
                )
            g = r["grades"]
            print(f"  grades (truth -> S/A/B): {g['confusion']}  accuracy B vs not {g['accuracy_b_vs_not']}")
    if reward := result.get("reward"):
        acc, held = reward["holdout_pairwise_accuracy"], reward["holdout"]
        print(
            f"\n== reward model on {reward['judge_model']}'s grades {reward['grades']}: held-out pairwise "
            f"accuracy listwise {acc['listwise']}, pointwise {acc['pointwise']}, cosine {acc['cosine']} "
            f"({held['pairs']} pairs in {held['groups']} lists)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument(
        "--seed", type=int, default=101, help="the world's seed (not the one the thresholds were set on)"
    )
    parser.add_argument(
        "--judge-llm",
        default="qwen25_coder_1p5b_cpu,smollm2_cpu",
        help="llm config groups of the judge models to measure, comma-separated (the first is the "
        "headline); none: no LLM dimensions",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    result = run(args)
    report(result)
    print(write_result("judge", result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
