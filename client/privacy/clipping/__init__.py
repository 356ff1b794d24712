"""Per-sample clipping for DP-SGD: book-keeping (one backward pass, per-layer rules) wherever its rules cover
every trained layer, Opacus's hooks otherwise (client/privacy/private_step.py picks)."""
