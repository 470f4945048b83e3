"""A full disk mid-write (drill 4, reduced): the warehouse on a small tmpfs filled by a ballast
file, the write failing while its data files are written and while it commits; the table stays
at its version, readable and unchanged, and the error names the table and the cause."""

from __future__ import annotations

import pytest

from bench.drills import disk
from sparkio.warehouse import failure_cause


def test_a_cause_is_found_under_spark_and_delta_rs_wrapping():
    wrapped = Exception(
        "[PYTHON_DATA_SOURCE_ERROR] Failed to commit: Traceback (most recent call last):\n"
        '  File "recgpt/delta.py", line 355, in commit\n'
        "OSError: Generic LocalFileSystem error\n"
        "          \x1b[31m↳\x1b[0m Unable to copy data to file\n"
        "           \x1b[31m↳\x1b[0m No space left on device (os error 28)\n\n SQLSTATE: 38000"
    )
    assert failure_cause(wrapped) == (
        "OSError: Generic LocalFileSystem error: Unable to copy data to file: "
        "No space left on device (os error 28)"
    )
    assert failure_cause(RuntimeError("plain\nsecond line")) == "RuntimeError: plain"


@pytest.mark.slow
def test_a_full_disk_leaves_the_table_as_it_was_and_says_why(spark, tmp_path):
    [result] = disk.run(tmp_path, cases=3, spark=spark)
    assert result.passed, result.failures
    assert result.details["failed_in"] == {"data files": 2, "commit": 1}
    assert result.rows_in == result.rows_written == 2_500 and result.rows_lost == 0
