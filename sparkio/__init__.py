"""Spark I/O: the session factory, the Delta warehouse and its Spark data source, staged waves,
and ingest's raw inputs (dataset loaders, the synthetic generator). Transforms live in `udfs/`."""
