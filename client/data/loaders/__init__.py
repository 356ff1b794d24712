"""Readers for the published emotion datasets, each in its own module."""
