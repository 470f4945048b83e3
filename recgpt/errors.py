"""Domain exceptions: one per failure kind, each with a message that says what to do."""

from __future__ import annotations


class RecGPTError(Exception):
    """Base of every error this job raises on purpose."""


class NothingToDo(RecGPTError):
    """The stage has no input for the date and was asked to skip it: it records a `skipped` run
    and its entry point exits with SKIPPED_EXIT_CODE (Airflow marks the task skipped)."""


# BashOperator's default skip code: the scheduler shows the task as skipped, not failed.
SKIPPED_EXIT_CODE = 99


class ConfigError(RecGPTError):
    """The configuration is missing a value or holds one that cannot work."""


class SourceError(RecGPTError):
    """An input source is missing, empty or not in the format it claims (names the file)."""


class StorageError(RecGPTError):
    """A Delta table could not be read or written."""


class CommitConflictError(StorageError):
    """Another writer committed to the same table first and retries were exhausted."""


class RowCountMismatchError(RecGPTError):
    """A stage's rows in do not equal rows written plus rows quarantined: a row was lost."""


class RunBusyError(RecGPTError):
    """Another run holds the stage for the same date: this one refused instead of interleaving
    its writes with the other's (the message names the other run)."""
