"""Administrator configuration: profiles, bindings and runner settings."""

from sandboxd.config.loader import (
    ConfigError,
    ResolvedProfile,
    load_config,
    parse_config,
    resolve_binding,
)
from sandboxd.config.models import PlatformConfig

__all__ = [
    "ConfigError",
    "PlatformConfig",
    "ResolvedProfile",
    "load_config",
    "parse_config",
    "resolve_binding",
]
