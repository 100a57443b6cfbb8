"""Helpers shared by the tests: plain code, no fixtures (those live in the conftest files).

tests/conftest.py registers this package for pytest's assertion rewriting, so a failed `assert`
in here reports its values like one written in the test itself.
"""
