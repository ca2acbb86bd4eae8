"""Bottom layer (imports nothing else of mmdet3d): ``config``, ``registry``, ``logging``,
``distributed``, ``checkpoint``."""
from .config import ConfigError, apply_overrides, dump_config, load_config, resolve_references
from .registry import Registry, build_from_cfg

__all__ = ["ConfigError", "Registry", "apply_overrides", "build_from_cfg", "dump_config", "load_config", "resolve_references"]
