"""Pipeline stages: one module per stage, each doing one thing on store keys."""
