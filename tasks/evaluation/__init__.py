"""Pure evaluation code (no Prefect, no store, no I/O): metrics, thresholds, score
normalisation, drift statistics, injected anomalies and the selection rule."""
