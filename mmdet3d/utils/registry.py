"""Registries: components are built from dicts with a ``type`` key.

``@REGISTRY.register_module()`` refuses a duplicate name, so two classes can never silently
share one. ``build_from_cfg`` pops ``type`` and passes the rest as keyword arguments, so every
module stays constructible in plain Python.
"""
from __future__ import annotations

import copy
import difflib
from typing import Any, Callable, Mapping


class Registry:
    def __init__(self, name: str):
        self.name = name
        self._modules: dict[str, Callable] = {}

    def __contains__(self, key: str) -> bool:
        return key in self._modules

    def __len__(self) -> int:
        return len(self._modules)

    def __repr__(self) -> str:
        return f"Registry(name={self.name!r}, items={sorted(self._modules)})"

    @property
    def names(self) -> list[str]:
        return sorted(self._modules)

    def get(self, key: str) -> Callable:
        if key not in self._modules:
            close = difflib.get_close_matches(key, self._modules, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise KeyError(
                f"{key!r} is not registered in the {self.name} registry.{hint} "
                f"Registered names: {', '.join(self.names) or '(none)'}"
            )
        return self._modules[key]

    def register_module(self, name: str | None = None) -> Callable:
        def _register(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._modules:
                raise KeyError(
                    f"{key!r} is already registered in the {self.name} registry "
                    f"(by {self._modules[key].__module__}.{self._modules[key].__qualname__})"
                )
            self._modules[key] = obj
            return obj

        return _register

    def build(self, cfg: Mapping[str, Any] | None, **default_args: Any) -> Any:
        return build_from_cfg(cfg, self, **default_args)


def build_from_cfg(cfg: Mapping[str, Any] | None, registry: Registry, **default_args: Any) -> Any:
    """Build ``registry[cfg['type']](**rest, **default_args)``; ``None`` builds ``None``."""
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{registry.name} config must be a mapping with a 'type' key, got {type(cfg).__name__}: {cfg!r}")
    if "type" not in cfg:
        raise KeyError(f"{registry.name} config has no 'type' key: {dict(cfg)!r}")
    kwargs = {k: copy.deepcopy(v) for k, v in cfg.items() if k != "type"}
    for k, v in default_args.items():
        kwargs.setdefault(k, v)
    obj_cls = registry.get(cfg["type"])
    try:
        return obj_cls(**kwargs)
    except TypeError as e:
        raise TypeError(f"building {registry.name} {cfg['type']!r} failed: {e}") from e
