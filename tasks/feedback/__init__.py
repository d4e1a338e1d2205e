"""Operators' feedback: the labels table and the ways answers reach it (review, CLI, import)."""
