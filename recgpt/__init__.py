"""RecGPT-V2 nightly intent mining: the core library (no Spark imports).

Schemas, synthetic data, validation rules, Delta storage helpers and run records live here; the
Spark-side partition functions are in `udfs/` and the stage entry points in `jobs/`.
"""

__version__ = "0.1.0"
