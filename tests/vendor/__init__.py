"""Test suites of other projects, vendored unchanged with their licence."""
