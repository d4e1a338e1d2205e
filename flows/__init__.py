"""Prefect flows: thin, readable compositions of the stages in tasks/."""
