"""Synthetic datasets in the published formats, and preparing data for a simulation."""
