"""The exceptions a user can act on, shared by every package (none imports another's)."""


class ConfigError(ValueError):
    """A bad config value; the message starts with the offending key so the CLI can print one line."""


class InputError(ValueError):
    """A bad input file or directory; the message names it, so the CLI can print one line."""
