"""Pure evaluation code (no Prefect, no store): metrics, thresholds, score normalisation,
drift statistics, and the loaders of public labelled data used by the benchmark runner."""
