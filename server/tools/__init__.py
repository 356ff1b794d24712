"""Coordinator commands: verify, federation credentials."""
