"""Shared fixtures for every test suite in the repository (see cliprs.testing)."""

pytest_plugins = ["cliprs.testing"]
