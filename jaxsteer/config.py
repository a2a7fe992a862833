"""The one config mechanism of every run kind: YAML + dotted overrides -> a tree of dataclasses.

    cfg = load_config(TrainConfig, "experiments/smollm2_arithmetic_steering.yaml", ["optimizer.lr=1e-4"])

A config class is a (frozen) dataclass whose fields are values or nested config sections (any
depth). Every key of the YAML file and of a `key=value` override must name a field
(`section.sub.field`); anything else is a `ConfigError` naming the key and the valid ones. Values
are converted to the field's annotated type (floats must be finite; `"1e-4"` -> float, `"[10, 20]"` ->
tuple, `"null"` -> None, `"true"` -> bool). `config_to_dict` gives the effective config back as plain
data, `save_config` writes it as YAML, and `config_diff` lists what a resumed run would change.

Renamed keys: a root config class may list `RENAMED = {"old.key": "new.key", "old_section.*": "new.*"}`.
An old key is moved to its new place on load with a one-line `ConfigDeprecationWarning` naming the new
key (silently when reading a run directory's saved config), so old configs and run directories keep
loading. A class may also define `migrate(data) -> data` (a classmethod) for changes a rename cannot
express.

Which learner reads a field: a section class may say `LEARNERS = (...)` (the `algorithm` names that
read it) and a field `dataclasses.field(metadata={"learners": (...)})`; `unused_fields(cfg, algorithm)`
names every field set away from its default that the run's learner does not read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
import warnings
from collections.abc import Sequence
from typing import Any, TypeVar

import yaml

from .errors import JaxsteerError

C = TypeVar("C")


class ConfigError(JaxsteerError, ValueError):
    """A config key or value that cannot be used (the message names it)."""


class ConfigDeprecationWarning(FutureWarning):
    """A config key that was renamed: the message names the new key."""


# --------------------------------------------------------------------------- the tree of classes


def is_section(tp: Any) -> bool:
    """Whether an annotation is a config section (a dataclass type)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def field_names(cls: type) -> list[str]:
    """The field names of a config class, in order."""
    return [f.name for f in dataclasses.fields(cls)]


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of a config class."""
    return typing.get_type_hints(cls)


def field_default(cls: type, name: str) -> Any:
    """The default value of one field of a config class."""
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]


def resolve_key(cls: type, key: str) -> list[str]:
    """The parts of a dotted key, checked against the tree of `cls` (ConfigError naming the valid keys)."""
    parts = key.split(".")
    node: Any = cls
    for i, part in enumerate(parts):
        where = ".".join(parts[:i])
        if not part or part not in field_names(node):
            scope = f"in {where}" if where else "top-level"
            raise ConfigError(f"unknown config key {key!r}; valid {scope} keys: {', '.join(field_names(node))}")
        tp = field_types(node)[part]
        if i == len(parts) - 1:
            if is_section(tp):
                raise ConfigError(f"config key {key!r} is a section; set one of its fields ({key}.FIELD=value)")
        elif not is_section(tp):
            raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = tp
    return parts


# --------------------------------------------------------------------------- values


def parse_scalar(text: str) -> Any:
    """A command-line value: YAML, except that `1e-4` is a float (YAML 1.1 reads it as a string)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _coerce_union(value: Any, args: tuple, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for option in args:
        if option is type(None):
            continue
        try:
            return coerce(value, option, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{key}: cannot use {value!r}")


def _coerce_container(value: Any, tp: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, str):
        value = parse_scalar(value)
    if origin in (dict,) or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{key}: expected a list, got {value!r}")
    inner = args[0] if args else Any
    items = [coerce(v, inner, key) for v in value]
    return list(items) if (origin is list or tp is list) else tuple(items)


def coerce(value: Any, tp: Any, key: str) -> Any:
    """`value` converted to the annotated type `tp`.

    Args:
        value: plain data from YAML or an override (strings parse as scalars for bool / int / float).
        tp: the field's resolved annotation (scalars, unions with None, tuples, lists, dicts).
        key: the dotted key, named in the error.

    Returns:
        The converted value.

    Raises:
        ConfigError: naming `key` when the value does not fit `tp` (or is a non-finite float).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, typing.get_args(tp), key)
    if tp is Any:
        return value
    if origin in (tuple, list, dict) or tp in (tuple, list, dict):
        return _coerce_container(value, tp, key)
    if isinstance(value, str) and tp in (bool, int, float):
        value = parse_scalar(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value}: must be a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list, tuple)) or value is None:
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type[C], data: Any, prefix: str = "") -> C:
    """`cls(**data)` with nested sections built recursively and every value coerced to its field's type.

    Args:
        cls: the config class (a dataclass whose dataclass-typed fields are sections).
        data: nested plain data (None: all defaults).
        prefix: the dotted key of `data` (with a trailing "."), for error messages.

    Returns:
        The config.

    Raises:
        ConfigError: naming an unknown key, a bad value or a failed check of the class.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix[:-1]!r} must be a mapping, got {data!r}")
    hints, names = field_types(cls), field_names(cls)
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if k not in names:
            where = f"in {prefix[:-1]}" if prefix else "top-level"
            raise ConfigError(f"unknown config key {key!r}; valid {where} keys: {', '.join(names)}")
        kwargs[k] = build(hints[k], v, key + ".") if is_section(hints[k]) else coerce(v, hints[k], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix[:-1] + ': ' if prefix else ''}{e}") from None


def plain(x: Any) -> Any:
    """A config tree (or any mix of dataclasses, tuples and dicts) as JSON-able plain data."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {str(k): plain(v) for k, v in x.items()}
    return x


def config_to_dict(cfg: Any) -> dict:
    """The effective config as plain JSON-able data (round-trips through `config_from_dict`)."""
    return plain(cfg)


# --------------------------------------------------------------------------- renamed keys


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested plain data as `{"a.b.c": value}` (an empty mapping stays a value)."""
    if not isinstance(tree, dict) or (not tree and prefix):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def unflatten(flat: dict[str, Any]) -> dict:
    """The inverse of `flatten`."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config key {key!r}: {p} is given both as a value and as a section")
        node[last] = value
    return out


def renamed_key(cls: type, key: str) -> str | None:
    """The new name of an old dotted key under `cls.RENAMED` (None: not renamed)."""
    table: dict[str, str] = getattr(cls, "RENAMED", {})
    if key in table:
        return table[key]
    for old, new in table.items():
        if old.endswith(".*") and key.startswith(old[:-1]):
            return new[:-1] + key[len(old) - 1 :]
    return None


def migrate(cls: type, data: dict, *, warn: bool = True, source: str = "") -> dict:
    """Old keys of `data` moved to their `cls.RENAMED` names, then `cls.migrate` when defined.

    Args:
        cls: the config class (its `RENAMED`: old dotted key -> new; "x.*" moves a whole section).
        data: nested plain data.
        warn: one ConfigDeprecationWarning per renamed key.
        source: a prefix naming where `data` came from (e.g. "run.yaml: "), for the messages.

    Returns:
        The migrated data (a new tree).

    Raises:
        ConfigError: an old key and its new one given with different values (neither null).
    """
    flat, out = flatten(data), {}
    renames = [(k, renamed_key(cls, k)) for k in flat]
    out = {k: flat[k] for k, new in renames if new is None}
    for key, new in renames:
        if new is None:
            continue
        if new in out:  # both spellings: fine when they agree or one is unset (null), as in a full saved config
            if flat[key] is not None and out[new] is not None and flat[key] != out[new]:
                raise ConfigError(f"{source}{key} is the old name of {new}, and both are given; keep {new}")
            if flat[key] is None:
                continue
        if warn:
            warnings.warn(
                f"{source}config key {key!r} is now {new!r}; write {new}", ConfigDeprecationWarning, stacklevel=3
            )
        out[new] = flat[key]
    data = unflatten(out)
    hook = getattr(cls, "migrate", None)
    if not callable(hook):
        return data
    migrated = hook(data)
    if not isinstance(migrated, dict):
        raise ConfigError(f"{cls.__name__}.migrate returned a {type(migrated).__name__}, not a dict")
    return migrated


# --------------------------------------------------------------------------- overrides, files


def apply_overrides(cls: type, data: dict, overrides: Sequence[str], *, warn: bool = True) -> dict:
    """`key=value` strings applied to nested plain data (a copy).

    Args:
        cls: the config class the keys are checked against (renamed keys are moved with a warning).
        data: nested plain data.
        overrides: dotted `key=value` strings (values parse as YAML scalars).
        warn: warn about renamed keys.

    Returns:
        The updated copy of `data`.

    Raises:
        ConfigError: an item that is not key=value, or a key `cls` does not have.
    """
    data = json.loads(json.dumps(data or {}))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        new = renamed_key(cls, key)
        if new is not None:
            if warn:
                warnings.warn(
                    f"override {key!r} is now {new!r}; write {new}={text}", ConfigDeprecationWarning, stacklevel=3
                )
            key = new
        *parents, last = resolve_key(cls, key)
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[last] = parse_scalar(text)
    return data


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:  # an unhashable key: PyYAML's own error follows
                continue
            if first != line:
                raise ConfigError(f"{self.name}:{line}: duplicate key {key!r} (first given on line {first}); keep one")
        return super().construct_mapping(node, deep=deep)


def read_config_file(path: str) -> dict:
    """A YAML config file as a mapping. ConfigError, one line, for a syntax error
    (`file:line:col: problem`), a duplicated key (naming both lines), an empty file or a top level
    that is not a mapping."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: YAML error: {' '.join(str(err).split())}") from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError(f"{path} is empty: it would run on every default setting; write the settings you mean")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of settings, got {type(data).__name__}")
    return data


def config_from_dict(cls: type[C], data: dict | None, *, warn: bool = True) -> C:
    """A `cls` config from nested plain data.

    Args:
        cls: the config class.
        data: nested plain data (None: all defaults); renamed keys are migrated.
        warn: warn about renamed keys.

    Returns:
        The config.

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    return build(cls, migrate(cls, dict(data or {}), warn=warn))


def load_config(cls: type[C], path: str | None = None, overrides: Sequence[str] = (), *, warn: bool = True) -> C:
    """Read a YAML config of `cls`, migrate renamed keys, apply overrides and build it.

    Args:
        cls: the config class.
        path: the YAML file (None: all defaults; see `read_config_file`).
        overrides: dotted `key=value` strings applied after the file.
        warn: warn about renamed keys (False: they move silently, as for a run directory's saved config).

    Returns:
        The config.

    Raises:
        ConfigError: an unreadable or empty file, an unknown key or a bad value.
    """
    data = read_config_file(path) if path is not None else {}
    data = migrate(cls, data, warn=warn, source=f"{path}: " if path else "")
    return build(cls, apply_overrides(cls, data, overrides, warn=warn))


def save_config(cfg: Any, path: str) -> None:
    """Write a config (any tree of dataclasses, or plain data) as YAML.

    Args:
        cfg: the config.
        path: the file written.
    """
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(plain(cfg), f, sort_keys=False)


def config_diff(cls: type, original: dict, new: Any, allowed: Sequence[str] = ()) -> list[str]:
    """The settings that differ between a saved config and `new`, outside `allowed`.

    A key missing from `original` (a field added after that run was written) takes its default.

    Args:
        cls: the config class (its defaults and renamed keys).
        original: the saved config as plain data (old keys are migrated).
        new: a `cls` config or plain data.
        allowed: dotted prefixes that may differ.

    Returns:
        `"key: old -> new"` per differing setting, sorted by key.
    """
    try:
        defaults = plain(cls())
    except (TypeError, ValueError):  # a config type without defaults for every field
        defaults = {}
    a = {**flatten(defaults), **flatten(migrate(cls, original, warn=False))}
    b = flatten(plain(new))
    out = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key) and not any(key == p or key.startswith(p + ".") for p in allowed):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


# --------------------------------------------------------------------------- who reads what


def _readers(cls: type, f: dataclasses.Field) -> tuple[str, ...] | None:
    learners = f.metadata.get("learners")
    if learners is None:
        tp = field_types(cls)[f.name]
        learners = getattr(tp, "LEARNERS", None) if is_section(tp) else None
    return learners


def unused_fields(cfg: Any, algorithm: str, prefix: str = "") -> list[str]:
    """Dotted names of the fields set away from their default that `algorithm`'s learner does not read.

    Who reads what comes from the `LEARNERS` of a section class and the `learners` metadata of a
    field (`read_by`).

    Args:
        cfg: the config (a tree of dataclasses).
        algorithm: the run's algorithm.
        prefix: the dotted key of `cfg` (with a trailing "."), for the names.

    Returns:
        The unused fields' dotted names.
    """
    cls, out = type(cfg), []
    for f in dataclasses.fields(cfg):
        value, name = getattr(cfg, f.name), prefix + f.name
        readers = _readers(cls, f)
        if readers is not None and algorithm not in readers:
            default = field_default(cls, f.name)
            if is_section(type(value)):
                defaults = flatten(plain(default))
                out += [f"{name}.{k}" for k, v in flatten(plain(value)).items() if defaults.get(k) != v]
            elif value != default:
                out.append(name)
        elif is_section(type(value)):
            out += unused_fields(value, algorithm, name + ".")
    return out


__all__ = [
    "ConfigError",
    "ConfigDeprecationWarning",
    "build",
    "coerce",
    "parse_scalar",
    "plain",
    "config_to_dict",
    "config_from_dict",
    "flatten",
    "unflatten",
    "migrate",
    "renamed_key",
    "apply_overrides",
    "read_config_file",
    "load_config",
    "save_config",
    "config_diff",
    "unused_fields",
    "field_default",
    "field_names",
    "field_types",
    "is_section",
    "resolve_key",
]
