"""Model families and the shared training engine: tensors in, tensors out (no Prefect, no I/O)."""
