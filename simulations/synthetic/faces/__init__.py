"""Synthetic faces: population (who), params (what each face looks like), render (pixels), writers (layouts)."""
