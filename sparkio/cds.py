"""A class-data-sharing (CDS) archive for the driver JVM of local Spark sessions.

A local session's JVM loads some ten thousand Spark classes before the first job; with the
archive it maps them from one file instead of reading and verifying them from the jars. Every
stage the Airflow DAG launches is a process of its own and pays that start, so it is worth having:
on 2 cores a session and its first job took 13.7 s without the archive and 9.7 s with it.

`make setup` builds it (`python -m sparkio.cds`): a warm-up session whose JVM writes the classes
it loaded when it exits. The archive is named after the Java binary and the Spark version, so
another JDK or Spark finds none and starts as before; `build_session` uses it only for local
masters without extra jars (the classpath must be the one it was made with).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyspark

ARCHIVE_DIR = Path(
    os.environ.get("RECGPT_SPARK_CDS_DIR") or Path(__file__).resolve().parent.parent / ".cache" / "spark-cds"
)


def java_binary() -> Path | None:
    """The `java` a local session starts (JAVA_HOME's, else the one on PATH), resolved."""
    home = os.environ.get("JAVA_HOME")
    found = Path(home) / "bin" / "java" if home else None
    if found is None or not found.is_file():
        which = shutil.which("java")
        found = Path(which) if which else None
    return found.resolve() if found else None


def archive_path() -> Path | None:
    """Where this Java's and this Spark's archive is (None without a Java)."""
    java = java_binary()
    if java is None:
        return None
    stamp = f"{java}|{java.stat().st_mtime_ns}|{pyspark.__version__}"
    key = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return ARCHIVE_DIR / f"spark-{pyspark.__version__}-{key}.jsa"


def java_options() -> str:
    """The driver JVM options that use the archive, or "" when there is none. -Xshare:auto: an
    archive the JVM cannot use is ignored, never a failure."""
    path = archive_path()
    if path is None or not path.is_file():
        return ""
    return f"-XX:SharedArchiveFile={path} -Xshare:auto"


def warm_up(target: str) -> None:
    """A session doing what stages do (Arrow batches to Python, joins, windows, Parquet) whose
    JVM writes the classes it loaded to `target` when it exits; returns once it has."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from sparkio.session import build_session

    spark = build_session(
        {
            "master": "local[2]",
            "conf": {
                "spark.ui.enabled": "false",
                "spark.sql.shuffle.partitions": 2,
                "spark.sql.execution.arrow.pyspark.enabled": "true",
                "spark.ui.showConsoleProgress": "false",
                # Quiet: the dump lists every class it leaves out (generated, signed jars).
                "spark.driver.extraJavaOptions": f"-XX:ArchiveClassesAtExit={target} -Xlog:cds=off",
            },
            "log_level": "ERROR",
            "cds": False,
        },
        "recgpt-cds-warm-up",
    )
    text = F.concat(F.lit("t"), F.col("id").cast("string"))
    df = spark.range(2000).select(F.col("id"), (F.col("id") % 13).alias("k"), text.alias("s"))
    ranked = df.withColumn("r", F.row_number().over(Window.partitionBy("k").orderBy(F.col("id").desc())))
    joined = ranked.join(df.groupBy("k").agg(F.count("*").alias("n")), "k")
    joined.mapInArrow(lambda batches: batches, joined.schema).toPandas()
    with tempfile.TemporaryDirectory() as tmp:
        joined.write.mode("overwrite").parquet(tmp)
        spark.read.parquet(tmp).where(F.col("r") < 3).collect()
    gateway = spark.sparkContext._gateway.proc  # the JVM this process launched
    spark.stop()
    gateway.stdin.close()  # the JVM exits when its parent's pipe closes, writing the archive
    gateway.wait(timeout=300)


def build(force: bool = False) -> Path | None:
    """Make this Java's and this Spark's archive unless it exists; its path (None: no Java)."""
    path = archive_path()
    if path is None:
        print("no java found: local sessions start without a class-data archive", file=sys.stderr)
        return None
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    subprocess.run([sys.executable, "-m", "sparkio.cds", "--warm-up", str(tmp)], check=True)
    if not tmp.is_file():
        raise RuntimeError(f"the warm-up JVM wrote no class-data archive at {tmp}")
    os.replace(tmp, path)  # atomic: a session starting meanwhile sees no archive or a whole one
    for stale in path.parent.glob("spark-*.jsa"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return path


def main() -> None:
    if sys.argv[1:2] == ["--warm-up"]:
        warm_up(sys.argv[2])
        return
    path = build(force="--force" in sys.argv[1:])
    if path is not None:
        print(f"spark class-data archive: {path} ({path.stat().st_size / 2**20:,.0f} MiB)")


if __name__ == "__main__":
    main()
