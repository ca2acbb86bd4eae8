"""Config loading: yaml with folder inheritance, ``--a.b.c value`` overrides, ``${a.b}`` references.

Inheritance follows torchpack's ``configs.load(path, recursive=True)``: every ``default.yaml``
from the filesystem root down to the file's folder is merged, then the file itself, later files
winning. Empty files are allowed; a file that is not a mapping is an error naming it.
References are resolved by lookup only (no ``eval``): a value that is exactly ``${a.b.c}`` takes
that key's value with its type; ``${a.b}`` inside a longer string is replaced by its text.
"""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable

import yaml
from torchpack.utils.config import Config

__all__ = ["ConfigError", "load_config", "apply_overrides", "resolve_references", "flatten_keys", "to_dict", "dump_config"]

_REF = re.compile(r"\$\{([^${}]+)\}")


class ConfigError(ValueError):
    """A config file, key or value is wrong; the message names it."""


def flatten_keys(cfg: dict, prefix: str = "") -> list[str]:
    """All dotted key paths of a nested dict, parents included."""
    keys = []
    for k, v in cfg.items():
        path = f"{prefix}{k}"
        keys.append(path)
        if isinstance(v, dict):
            keys.extend(flatten_keys(v, path + "."))
    return keys


def _lookup(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(dotted)
    return node


def _unknown_key_message(key: str, cfg: dict, what: str) -> str:
    close = difflib.get_close_matches(key, flatten_keys(cfg), n=5, cutoff=0.5)
    hint = f"; closest existing keys: {', '.join(close)}" if close else ""
    return f"{what} {key!r} does not exist in the config{hint}"


def resolve_references(cfg: dict) -> dict:
    """Replace ``${a.b}`` references in place, following chains; cycles are an error."""

    def resolve(value: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            return {k: resolve(v, stack) for k, v in value.items()}
        if isinstance(value, list):
            return [resolve(v, stack) for v in value]
        if not isinstance(value, str) or "${" not in value:
            return value
        whole = _REF.fullmatch(value.strip())
        names = [whole.group(1).strip()] if whole else [m.group(1).strip() for m in _REF.finditer(value)]
        resolved = {}
        for name in names:
            if name in stack:
                raise ConfigError(f"config reference cycle: {' -> '.join(stack + (name,))}")
            try:
                target = _lookup(cfg, name)
            except KeyError:
                raise ConfigError(_unknown_key_message(name, cfg, "referenced key ${...}:")) from None
            resolved[name] = resolve(target, stack + (name,))
        if whole:
            return resolved[names[0]]
        return _REF.sub(lambda m: str(resolved[m.group(1).strip()]), value)

    out = resolve(cfg, ())
    cfg.clear()
    cfg.update(out)
    return cfg


_KIND = {bool: "a boolean (true or false)", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}


def _kind(value: Any) -> type:
    for kind in _KIND:  # bool before int: True is an int in Python
        if isinstance(value, kind):
            return kind
    return type(value)


def _parse_value(key: str, text: str, old: Any) -> Any:
    """The yaml value of ``--key text``, of the kind of the value it replaces (``old``).

    ``null`` may replace anything and anything may replace ``null`` or a whole ``${...}``
    reference; an integer becomes a float where a float stood; a string key keeps the text as
    written. Anything else of another kind, or text that is not valid yaml, is a ``ConfigError``.
    """
    untyped = old is None or (isinstance(old, str) and _REF.fullmatch(old.strip()) is not None)
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        if isinstance(old, str) and not untyped:
            return text
        problem = str(getattr(e, "problem", None) or e).splitlines()[0]
        raise ConfigError(f"override --{key}: value {text!r} is not valid yaml ({problem})") from None
    if untyped or value is None:
        return value
    expected, got = _kind(old), _kind(value)
    if expected is str:
        if got in (list, dict):
            raise ConfigError(f"override --{key} expects a string, got {text!r} ({_KIND[got]})")
        return value if got is str else text
    if expected is float and got is int:
        return float(value)
    if expected is float and got is str:
        try:
            return float(text)
        except ValueError:
            pass
    if expected is not got:
        hint = " (needs a whole number)" if expected is int and got is float else ""
        current = f"now {old!r}" if expected not in (list, dict) else f"now a {expected.__name__}"
        raise ConfigError(f"override --{key} expects {_KIND.get(expected, expected.__name__)}{hint}, got {text!r}; {current}")
    return value


def apply_overrides(cfg: dict, opts: Iterable[str]) -> dict:
    """Apply ``--a.b.c value`` / ``--a.b.c=value`` pairs; every key must already exist and the
    value must be of its kind (``_parse_value``). A list element is named by its index
    (``--model.distill_losses.0.weight 0.1``)."""
    opts = list(opts)
    i = 0
    while i < len(opts):
        opt = opts[i]
        if not opt.startswith("--"):
            raise ConfigError(f"override {opt!r} does not start with '--' (expected --a.b.c value)")
        opt = opt[2:]
        if "=" in opt:
            key, text = opt.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(opts):
                raise ConfigError(f"override --{opt} has no value (expected --{opt} value)")
            key, text = opt, opts[i + 1]
            i += 2
        parts = key.split(".")
        node = cfg
        for depth, part in enumerate(parts):
            if isinstance(node, list):  # a list element by index: --model.distill_losses.0.weight
                if not part.isdigit() or int(part) >= len(node):
                    where = ".".join(parts[:depth])
                    raise ConfigError(f"override --{key}: {where} is a list of {len(node)}; "
                                      f"{part!r} is not an index in 0..{len(node) - 1}")
                part = int(part)
            elif not isinstance(node, dict) or part not in node:
                raise ConfigError(_unknown_key_message(key, cfg, "override key"))
            if depth == len(parts) - 1:
                node[part] = _parse_value(key, text, node[part])
            else:
                node = node[part]
    return cfg


def to_dict(cfg: Any) -> Any:
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _inherited_files(path: str) -> list[str]:
    """``default.yaml`` of every folder from the root down, then ``path`` (torchpack's order)."""
    files = [path]
    folder = os.path.dirname(os.path.abspath(path))
    while True:
        files.append(os.path.join(folder, "default.yaml"))
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return [f for f in reversed(files) if os.path.isfile(f) and not os.path.samefile(f, path)] + [path]


def load_config(path: str, overrides: Iterable[str] = ()) -> dict:
    """Load ``path`` with inheritance, apply overrides, resolve references; returns a plain dict.

    Merging is torchpack's ``Config.update`` (nested dicts merge, other values replace).
    """
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    cfg = Config()
    for file in _inherited_files(path):
        try:
            with open(file) as f:
                content = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {file} is not valid yaml: {e}") from e
        if content is None:
            continue
        if not isinstance(content, dict):
            raise ConfigError(f"config file {file} must hold a mapping at the top level, not {type(content).__name__}")
        cfg.update(content)
    plain = to_dict(cfg)
    apply_overrides(plain, overrides)
    return resolve_references(plain)


def dump_config(cfg: dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(cfg), f, sort_keys=False, default_flow_style=None)
