"""The one exception a user can fix by changing the config."""


class ConfigError(ValueError):
    """A bad config value; the message starts with the offending key so the CLI can print one line."""
