"""Training stages: train -> calibrate -> export ONNX -> report -> register; champion and promotion."""
