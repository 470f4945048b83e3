"""mine_intents as a stage: waves staged and written once, failures in their own table, a killed
run resumed to exactly the tables of an uninterrupted one, reruns that duplicate nothing, and the
run-wide rule on generic tags applied before the tables are written.

The model's answers come from a deterministic fake OpenAI server (tests/fake_openai.py): the real
engine's outputs depend on how requests were batched, which a kill-and-resume comparison cannot
allow. The real model runs the stage in the session's nightly chain (tests/test_nightly.py).

Only the run that is killed is a process of its own; the others run in the test session's Spark
(the stage's entry point and exit codes are covered by the chain and the DAG)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from pydantic import ValidationError

from jobs import compress, embed_items, ingest, mine_intents
from jobs.stage import StageReport, execute, open_context
from recgpt.agents.generic import category_words, names_category, tag_key
from recgpt.agents.schemas import Tag, build_schemas
from recgpt.agents.settings import AgentSettings
from recgpt.agents.validate import check_tags
from recgpt.config import load_config
from recgpt.errors import ConfigError, RecGPTError
from recgpt.rundate import RunDate
from sparkio.warehouse import Warehouse
from tests.conftest import ROOT
from tests.dag_support import DT, TINY, scripted
from udfs.mining import catalog_words, category_cores, mining_plan
from udfs.mining_tables import rejected_examples

pytestmark = pytest.mark.slow


def job(module: str, wh: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", module, f"run.dt={DT}", f"storage.warehouse={wh}", *TINY, *extra]


def fake_llm(url: str) -> list[str]:
    return ["context.mode=text", *scripted(url), "mine.wave_users=3", "mine.batch_users=2"]


def mine(spark, wh: Path, url: str, *extra: str) -> StageReport:
    """One mine_intents run in the session's Spark; failures raise as they would in the job."""
    cfg = load_config([f"run.dt={DT}", f"storage.warehouse={wh}", *TINY, *fake_llm(url), *extra])
    return execute(open_context(cfg, "mine_intents", spark), mine_intents.run)


def table(wh: Path, name: str, sort: list[str]) -> pd.DataFrame:
    df = DeltaTable(str(wh / name)).to_pandas()
    df = df.drop(columns=[c for c in ("run_id", "created_at", "latency_ms") if c in df.columns])
    for col in df.columns:  # lists compare as tuples
        if df[col].map(lambda v: hasattr(v, "tolist")).any():
            df[col] = df[col].map(lambda v: tuple(v.tolist()) if hasattr(v, "tolist") else v)
    return df.sort_values(sort).reset_index(drop=True)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, spark):
    """A warehouse with ingest, embed_items and compress done for DT on the chain's tiny world,
    in the session's Spark: all that mining reads. Built here rather than copied from the
    session's nightly chain, so these tests need not wait for it."""
    wh = tmp_path_factory.mktemp("mine") / "wh"
    for stage in (ingest, embed_items, compress):
        cfg = load_config([f"run.dt={DT}", f"storage.warehouse={wh}", *TINY])
        execute(open_context(cfg, stage.__name__.rsplit(".", 1)[-1], spark), stage.run)
    return wh


def test_failures_kill_resume_rerun_and_the_generic_tag_rule(
    prepared, scripted_llm, spark, tmp_path, project_env, capsys
):
    fake = scripted_llm
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    shutil.copytree(prepared, whole)
    shutil.copytree(prepared, killed)

    contexts = DeltaTable(str(whole / "user_context")).to_pandas()
    with_history = set(contexts[contexts.events_kept > 0].user_id)
    waves = -(-len(with_history) // 3)  # mine.wave_users=3
    assert waves >= 3

    # Uninterrupted.
    mine(spark, whole, fake.url)
    err = capsys.readouterr().err
    assert f"{waves} wave(s)" in err
    # The tasks' own reports reach the progress lines: every engine call, repairs included.
    last = [line for line in err.splitlines() if line.startswith("[mine_intents.v2.text] ")][-1]
    calls = DeltaTable(str(whole / "llm_calls")).to_pandas().attempts.sum()
    assert f"{len(with_history)}/{len(with_history)} rows" in last and f" {calls:,} calls " in last
    tags = table(whole, "user_intent_tags", ["user_id", "rank"])
    failures = table(whole, "mining_failures", ["user_id"])
    assert set(tags.user_id) | set(failures.user_id) == with_history
    assert not set(tags.user_id) & set(failures.user_id)
    # The fake cuts some planner answers off: those users are mined with the general persona,
    # whose Expert the fake cuts off too. They fail at the Expert, with both failed calls kept.
    assert len(failures) > 0 and set(failures.step) == {"expert"}
    assert failures.reason.str.startswith("invalid_output").all()
    for calls in failures.failed_calls:
        assert json.loads(calls) == {"expert: invalid_output": 1, "planner: invalid_output": 1}
    personas = table(whole, "user_personas", ["user_id", "persona_rank"])
    general = personas[personas.name == "all interests"]
    assert set(general.user_id) == set(failures.user_id)
    # The fallbacks and failed calls are counted in the stage's `runs` record.
    runs = DeltaTable(str(whole / "runs")).to_pandas()
    details = json.loads(runs[runs.stage == "mine_intents"].sort_values("started_at").details.iloc[-1])
    assert details["fallbacks"] == f"general_persona:invalid_output {len(failures)}"
    assert (
        details["failed_calls"]
        == f"expert: invalid_output {len(failures)}, planner: invalid_output {len(failures)}"
    )
    assert (tags.groupby("user_id")["rank"].apply(lambda r: list(r) == list(range(1, len(r) + 1)))).all()

    # Killed after its first staged wave, then resumed.
    staging = killed / "_staging" / "mine_intents" / f"dt={DT}" / "pipeline=v2" / "context_mode=text"
    run = subprocess.Popen(
        job("jobs.mine_intents", killed, *fake_llm(fake.url)),
        cwd=ROOT,
        env=project_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not list(staging.glob("wave=*/_SUCCESS")):
        assert run.poll() is None, "the run ended before a wave was staged"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finished = len(list(staging.glob("wave=*/_SUCCESS")))
    assert 1 <= finished < waves and not (killed / "user_intent_tags").exists()

    # A resume with other prompts would mix two runs' outcomes: refused, staging untouched.
    with pytest.raises(RecGPTError, match=r"made with other settings \(agents_sha256, prompt_version\)"):
        mine(spark, killed, fake.url, "resume=true", "pipeline.agents.prompt_version=v9")
    assert len(list(staging.glob("wave=*/_SUCCESS"))) == finished

    capsys.readouterr()
    mine(spark, killed, fake.url, "resume=true")
    resumed = capsys.readouterr().err
    assert "0 already done" not in resumed and "already done" in resumed
    for name, key in (
        ("user_intent_tags", ["user_id", "rank"]),
        ("user_personas", ["user_id", "persona_rank"]),
        ("mining_failures", ["user_id"]),
    ):
        pd.testing.assert_frame_equal(table(whole, name, key), table(killed, name, key))
    ledger = ["stage", "request_key"]
    assert table(whole, "llm_calls", ledger)[ledger].equals(table(killed, "llm_calls", ledger)[ledger])
    assert not staging.exists()  # cleaned up after the tables were written

    # A rerun recomputes and replaces (here with the run-wide rule on generic tags, whose effect
    # on the first run's rows it checks, then with the rescue of the users it empties); a resume
    # of a finished date mines nobody.
    ruled, emptied = check_generic_rule(spark, whole, fake.url)
    ruled = check_generic_rescue(spark, whole, fake.url, ruled, emptied)
    capsys.readouterr()
    mine(spark, whole, fake.url, "resume=true", *GENERIC_RULE)
    done = capsys.readouterr().err
    assert f"{len(with_history)} users with history, {len(with_history)} already done, 0 to mine" in done
    pd.testing.assert_frame_equal(table(whole, "user_intent_tags", ["user_id", "rank"]), ruled)
    # Nor may a resume add users mined by another prompt version to the finished tables.
    with pytest.raises(RecGPTError, match="holds tags of"):
        mine(spark, whole, fake.url, "resume=true", *GENERIC_RULE, "pipeline.agents.prompt_version=v9")


def test_a_users_file_mines_exactly_its_users_and_refuses_unknown_ids(
    prepared, scripted_llm, spark, tmp_path, capsys
):
    fake = scripted_llm
    wh = tmp_path / "wh"
    shutil.copytree(prepared, wh)
    contexts = DeltaTable(str(wh / "user_context")).to_pandas()
    with_history = sorted(contexts[contexts.events_kept > 0].user_id)
    without = sorted(contexts[contexts.events_kept == 0].user_id)

    # An id this date does not know (a list drawn from other data) stops the stage, naming it.
    listed = tmp_path / "users.txt"
    listed.write_text("\n".join([*with_history[:3], "u_from_elsewhere"]) + "\n")
    refusal = "1 of its 4 user ids have no user_context row for 2025-10-28 (e.g. u_from_elsewhere)"
    with pytest.raises(RecGPTError, match=re.escape(refusal)):
        mine(spark, wh, fake.url, f"mine.users_file={listed}")
    assert not (wh / "user_intent_tags").exists()

    # Listed users only: those with history get an outcome, the listed one without is counted.
    listed.write_text("\n".join([*with_history[:3], *without[:1], with_history[0]]) + "\n")
    capsys.readouterr()
    mine(spark, wh, fake.url, f"mine.users_file={listed}")
    summary = capsys.readouterr().out
    tags = DeltaTable(str(wh / "user_intent_tags")).to_pandas()
    failures = DeltaTable(str(wh / "mining_failures")).to_pandas()
    assert set(tags.user_id) | set(failures.user_id) == set(with_history[:3])
    assert f"3 with history: {tags.user_id.nunique()} tagged" in summary
    assert f"{len(without[:1])} without reliable history not mined" in summary


def test_known_words_are_the_embedding_vocabulary_and_the_catalogs_most_frequent_words(prepared, spark):
    wh = Warehouse(spark, str(prepared), engine="delta-rs")
    dt = RunDate.parse(DT)
    items = DeltaTable(str(prepared / "items")).to_pandas()
    texts = items.title + " " + items.category + " " + items.category_path.fillna("")
    # Words as validation splits a tag; one with a digit is always known, so none is listed.
    per_item = [{w for w in re.findall(r"\w+", text.lower()) if w.isalpha()} for text in texts]
    counts = pd.Series([w for found in per_item for w in found]).value_counts()
    # The words in most items' text, most frequent first (ties by word), each item counted once.
    ranked = sorted(counts.index, key=lambda w: (-counts[w], w))
    assert catalog_words(wh, dt, 5) == ranked[:5]

    text_mode = {"pipeline": "v2", "context_mode": "text"}
    base = [f"run.dt={DT}", f"storage.warehouse={prepared}", *TINY]
    plan = mining_plan(
        load_config([*base, "pipeline.agents.validation.catalog_words=100000"]), wh, dt, text_mode
    )
    assert plan.catalog_words == tuple(ranked)  # fewer words than the limit: all of them
    rules = plan.validation(AgentSettings.from_config(plan.agents))
    assert rules.vocabulary is not None and set(plan.catalog_words) <= rules.vocabulary
    assert {"gift", "with", "a"} <= rules.vocabulary  # the embedding model's general words
    coined = [Tag("nonsensefest decorations", "r"), Tag("gardensetree with a varietyofluc", "r")]
    assert [r.reason for r in check_tags(coined, rules).rejected] == ["unknown_word"] * 2

    # The default (conf/pipeline/v2.yaml) checks the words; null leaves the check out (the
    # catalog reference too here: it is not what this test is about, and costs a Spark job).
    assert load_config(base).pipeline.agents.validation.catalog_words == 100000
    off = [f"pipeline.agents.validation.{key}=null" for key in ("catalog_words", "catalog_min_cosine")]
    assert mining_plan(load_config([*base, *off]), wh, dt, text_mode).catalog_words is None


def test_the_summary_names_each_rules_most_frequent_rejections(spark):
    rows = [
        (json.dumps({"brand": ["nike shoes", "puma caps"], "not_a_product": ["safety net"]}),),
        (json.dumps({"brand": ["nike shoes"]}),),
        (None,),
    ]
    outcomes = spark.createDataFrame(rows, "rejected_examples string")
    assert rejected_examples(outcomes, per_rule=1) == {
        "brand": [("nike shoes", 2)],
        "not_a_product": [("safety net", 1)],
    }
    assert rejected_examples(outcomes)["brand"] == [("nike shoes", 2), ("puma caps", 1)]


def test_tag_cores_are_the_catalogs_category_names_by_size(prepared, spark):
    wh = Warehouse(spark, str(prepared), engine="delta-rs")
    dt = RunDate.parse(DT)
    items = DeltaTable(str(prepared / "items")).to_pandas()
    names = (
        items.category.str.lower().str.replace("'", "").str.replace(r"[^a-z]+", " ", regex=True).str.strip()
    )
    counts = names.value_counts()
    ranked = sorted(counts.index, key=lambda n: (-counts[n], n))
    assert category_cores(wh, dt, 1, 3, 4) == ranked[:3]
    smallest = int(counts.min())
    assert category_cores(wh, dt, smallest + 1, 1000, 4) == [n for n in ranked if counts[n] > smallest]
    assert category_cores(wh, dt, int(counts.max()) + 1, 1000, 4) == []

    # Grounding fills the plan's tag cores (its settings stay out of the agents' mapping) and
    # marks the prompt version; the Expert's schema then takes only tags that name one of them.
    text_mode = {"pipeline": "v2", "context_mode": "text"}
    base = [
        f"run.dt={DT}",
        f"storage.warehouse={prepared}",
        *TINY,
        "pipeline.agents.validation.catalog_min_cosine=null",
    ]
    grounded = [
        *base,
        "pipeline.agents.tag.grounding.source=categories",
        "pipeline.agents.tag.core_first=false",
        "pipeline.agents.tag.history_cores=false",
    ]
    plan = mining_plan(load_config(grounded), wh, dt, text_mode)
    assert plan.agents["tag"]["cores"] == ranked and "grounding" not in plan.agents["tag"]
    assert plan.agents["prompt_version"] == "v2.4+cores"
    settings = AgentSettings.from_config(plan.agents)
    expert = build_schemas(settings).expert
    expert.model_validate_json(
        json.dumps({"tags": [{"tag": f"favourite {ranked[0]}", "reason": "r", "evidence": "e"}]})
    )
    with pytest.raises(ValidationError, match="should match pattern"):
        expert.model_validate_json(
            json.dumps({"tags": [{"tag": "waterproof hiking gear", "reason": "r", "evidence": "e"}]})
        )
    # A fixed list wins over the catalog; with source null tags stay free.
    fixed = mining_plan(load_config([*grounded, "+pipeline.agents.tag.cores=[snacks]"]), wh, dt, text_mode)
    assert fixed.agents["tag"]["cores"] == ["snacks"]
    first = mining_plan(load_config([*grounded, "pipeline.agents.tag.core_first=true"]), wh, dt, text_mode)
    assert first.agents["prompt_version"] == "v2.4+cores-first"
    free = mining_plan(load_config([*base, "pipeline.agents.tag.grounding.source=null"]), wh, dt, text_mode)
    assert not free.agents["tag"].get("cores") and free.agents["prompt_version"] == "v2.4"
    # By default tags are grounded, core first, in the cores of the user's history.
    default = mining_plan(load_config(base), wh, dt, text_mode)
    assert default.agents["tag"]["cores"] == ranked
    assert default.agents["prompt_version"] == "v2.4+cores-first-history-beyond"
    only = mining_plan(load_config([*base, "pipeline.agents.tag.beyond_history=false"]), wh, dt, text_mode)
    assert only.agents["prompt_version"] == "v2.4+cores-first-history"
    with pytest.raises(ConfigError, match=r"grounding\.source must be categories or null"):
        mining_plan(load_config([*base, "pipeline.agents.tag.grounding.source=titles"]), wh, dt, text_mode)


# Any tag two users share is generic, unless a catalog category.
GENERIC_RULE = (
    "pipeline.agents.validation.generic_max_share=0.01",
    "pipeline.agents.validation.generic_min_users=1",
)


def check_generic_rule(spark, wh: Path, url: str) -> tuple[pd.DataFrame, set[str]]:
    """A rerun with the run-wide rule on generic tags (no rescue): the date's tables (mined
    without it) lose the generic tags, all at once, as they are replaced. Returns the tags
    written and the users left without a tag."""
    before = table(wh, "user_intent_tags", ["user_id", "rank"])
    failed_before = table(wh, "mining_failures", ["user_id"])
    report = mine(spark, wh, url, *GENERIC_RULE, "pipeline.agents.validation.generic_rescue=false")
    after = table(wh, "user_intent_tags", ["user_id", "rank"])
    failures = table(wh, "mining_failures", ["user_id"])
    items = DeltaTable(str(wh / "items")).to_pandas()
    known = category_words([*items.category, *items.category_path])
    keys = before.tag.map(tag_key)
    shared = keys.map(before.groupby(keys).user_id.nunique()) > 1
    generic = shared & ~before.tag.map(lambda t: names_category(t, known))
    assert generic.any() and not generic.all(), "the scripted answers no longer share some tags"

    # The rest of each user's list, in its order, ranked from 1.
    rest = before[~generic].copy()
    rest["rank"] = (rest.groupby("user_id").cumcount() + 1).astype("int32")
    pd.testing.assert_frame_equal(after, rest.sort_values(["user_id", "rank"]).reset_index(drop=True))
    # A user left without a tag fails, with how many generic tags it lost; no user is lost.
    emptied = set(before.user_id) - set(after.user_id)
    new = failures[~failures.user_id.isin(failed_before.user_id)]
    assert set(new.user_id) == emptied and set(new.step) <= {"generic"}
    lost = before[generic].groupby("user_id").size()
    for row in new.itertuples():
        assert row.reason == "only_generic_tags"
        assert json.loads(row.rejected)["generic_tag"] == lost[row.user_id]
    assert report.details["generic_tag"] == int(generic.sum())
    assert report.rows_out == after.user_id.nunique() and report.rows_quarantined == len(failures)
    assert emptied and "generic_rescue" not in report.details
    return after, emptied


def check_generic_rescue(spark, wh: Path, url: str, ruled: pd.DataFrame, emptied: set[str]) -> pd.DataFrame:
    """The same rerun with the rescue: exactly the users the rule emptied are mined once more
    (the general persona's Expert, the generic tags banned), their calls join the ledger, and the
    tables still obey the rule. Returns the tags written."""
    ruled_failures = table(wh, "mining_failures", ["user_id"])
    report = mine(spark, wh, url, *GENERIC_RULE)
    tags = table(wh, "user_intent_tags", ["user_id", "rank"])
    failures = table(wh, "mining_failures", ["user_id"])
    ledger = DeltaTable(str(wh / "llm_calls")).to_pandas()
    assert set(ledger[ledger.request_key.str.contains(":expert_rescue:")].user_id) == emptied
    assert report.details["llm"]["expert_rescue"]["calls"] >= len(emptied)
    assert ledger.request_key.is_unique
    assert f"generic_rescue:only_generic_tags {len(emptied)}" in report.details["fallbacks"]
    line = report.details["generic_rescue"]
    assert line.startswith(f"{len(emptied)} user(s) left without a tag mined again")
    # No user lost or doubled; the rule holds over the rescued tags too.
    contexts = DeltaTable(str(wh / "user_context")).to_pandas()
    assert set(tags.user_id) | set(failures.user_id) == set(contexts[contexts.events_kept > 0].user_id)
    assert not set(tags.user_id) & set(failures.user_id) and failures.user_id.is_unique
    items = DeltaTable(str(wh / "items")).to_pandas()
    known = category_words([*items.category, *items.category_path])
    keys = tags.tag.map(tag_key)
    shared = keys.map(tags.groupby(keys).user_id.nunique()) > 1
    assert not (shared & ~tags.tag.map(lambda t: names_category(t, known))).any()
    # The others keep their tags (less any a rescued user's tag made generic); a rescued user
    # gets new tags or fails again with only_generic_tags.
    others = tags[~tags.user_id.isin(emptied)]
    pairs = set(zip(ruled.user_id, ruled.tag, strict=True))
    assert set(zip(others.user_id, others.tag, strict=True)) <= pairs
    again = failures[failures.user_id.isin(emptied)]
    assert set(again.step) <= {"generic"} and set(again.reason) <= {"only_generic_tags"}
    assert set(again.user_id) | set(tags[tags.user_id.isin(emptied)].user_id) == emptied
    # One that fails again names what both minings rejected (the first's generic tags among it).
    earlier = {r.user_id: Counter(json.loads(r.rejected or "{}")) for r in ruled_failures.itertuples()}
    for row in again.itertuples():
        assert Counter(json.loads(row.rejected or "{}")) >= earlier[row.user_id] > Counter()
    return tags
