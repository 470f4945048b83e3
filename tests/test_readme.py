"""The README's commands and table reference match the project."""

from __future__ import annotations

import re

from recgpt.tables import markdown_reference
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()
MAKEFILE = (ROOT / "Makefile").read_text()


def test_readme_opens_with_setup_run_and_test_commands():
    commands = re.findall(r"^make ([a-z-]+)", README, flags=re.M)
    assert commands[:3] == ["setup", "run", "test"]
    for target in commands:
        assert re.search(rf"^{target}:", MAKEFILE, flags=re.M), f"README names a missing target: {target}"


def test_ci_runs_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make setup" in ci and "make test" in ci


def test_table_reference_is_generated_from_the_schemas():
    section = README.split("<!-- tables:begin -->\n", 1)[1].split("<!-- tables:end -->", 1)[0]
    assert section.strip() == markdown_reference().strip()


def test_the_layout_table_names_every_module_of_the_spark_folders():
    rows = dict(re.findall(r"^\| `([a-z]+)/` \| (.*) \|$", README, flags=re.M))
    for folder in ("sparkio", "udfs"):
        modules = sorted(p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py")
        missing = [m for m in modules if f"`{m}`" not in rows[folder]]
        assert not missing, f"README's layout row for {folder}/ does not name {missing}"
    for folder in rows:
        assert (ROOT / folder).is_dir(), f"README's layout names {folder}/, which does not exist"
