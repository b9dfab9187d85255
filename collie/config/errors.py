"""The error every configuration check raises: one line that starts with the setting to change."""


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range."""
