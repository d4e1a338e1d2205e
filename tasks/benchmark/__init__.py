"""The benchmark room: reference detectors that `nightowl benchmark --baselines` compares against
(torch and the `bench` extra); nothing on the training or nightly path imports it."""
