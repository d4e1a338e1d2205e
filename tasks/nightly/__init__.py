"""Nightly stages: score a day with the champion -> drift check -> alerts -> UI artifacts."""
