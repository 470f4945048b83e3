"""How every job starts Spark: a local session's driver JVM maps its classes from the class-data
archive `make setup` builds (sparkio.cds); a classpath other than Spark's own never gets it."""

from __future__ import annotations

from pathlib import Path

from sparkio import cds
from sparkio.session import with_class_archive

OPTIONS = "spark.driver.extraJavaOptions"


def test_the_archive_joins_the_driver_options_only_when_it_exists_and_the_classpath_is_sparks(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(cds, "ARCHIVE_DIR", tmp_path)
    conf = {OPTIONS: "-Duser.timezone=UTC"}
    assert with_class_archive(conf) == conf  # none built yet: the session starts as before

    path = cds.archive_path()
    assert path is not None and path.parent == tmp_path and path.name.endswith(".jsa")
    path.write_bytes(b"")
    archive = f"-XX:SharedArchiveFile={path} -Xshare:auto"
    assert with_class_archive(conf)[OPTIONS] == f"-Duser.timezone=UTC {archive}"
    assert with_class_archive({})[OPTIONS] == archive
    # Extra jars change the classpath the archive was made with.
    for extra in ("spark.jars", "spark.jars.packages", "spark.driver.extraClassPath"):
        assert with_class_archive({**conf, extra: "x.jar"}) == {**conf, extra: "x.jar"}


def test_the_sessions_jvm_was_started_with_the_archive_make_setup_built(spark):
    path = cds.archive_path()
    assert path is not None and path.is_file(), f"no class-data archive at {path}: run `make setup`"
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    arguments = [str(a) for a in runtime.getInputArguments()]
    assert f"-XX:SharedArchiveFile={Path(path)}" in arguments and "-Xshare:auto" in arguments
