"""The run configuration: every key, parsed and checked once, in sections."""
