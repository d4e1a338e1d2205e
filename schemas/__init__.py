"""Data contracts: typed configuration, Great Expectations suites, Arrow schemas."""
