"""Re-export of the shared ConfigError (kept so `wdiv.training.errors` imports keep working)."""

from wdiv.errors import ConfigError

__all__ = ["ConfigError"]
