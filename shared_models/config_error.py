"""The one error a bad run configuration raises, shared by every module that checks a key."""


class ConfigError(ValueError):
    """A run configuration value is missing, mistyped, out of range, or combines with another that breaks a promise."""
