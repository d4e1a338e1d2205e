"""Data in: raw batches -> validated layer (ingest, synthetic feed, public labelled data sets)
-> scaled rows and window index."""
