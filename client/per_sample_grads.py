"""Faster per-sample gradient rules for DP-SGD, registered through Opacus's own extension points.

Imported by ``client/dp_training.py`` so that every private model built there uses them.
"""
