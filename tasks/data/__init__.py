"""Data in: raw batches -> validated layer (ingest, synthetic feed) -> scaled rows and window index."""
