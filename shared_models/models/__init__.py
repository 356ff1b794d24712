"""The model families both sides build, and the registry that names them."""
