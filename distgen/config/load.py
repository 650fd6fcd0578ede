"""YAML + dotlist overrides -> a validated, frozen :class:`~distgen.config.schema.RunConfig`.

This is the one module of distgen that uses omegaconf, and it imports it only inside
:func:`load_config`, so that :func:`config_to_dict`, :func:`config_hash` and
:func:`config_from_dict` stay standard-library only.

Layers merge in order: the schema defaults, the YAML file, then each ``key=value`` override
(values parsed as YAML: ``facility.row_serving=[a,b]``, ``output.racks_resolution_s=null``).
OmegaConf ``${...}`` interpolations are resolved. Unknown keys, wrong types and invalid values
raise :class:`~distgen.errors.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

from distgen.config.schema import RunConfig
from distgen.errors import ConfigError

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class ConfigFileError(ConfigError):
    """A run-configuration file that is missing or not valid YAML.

    Attributes: ``path`` (the file), ``line`` (1-based, when YAML gives one); ``key`` is None.
    """

    def __init__(self, path: str | Path, message: str, *, line: int | None = None):
        self.key = None
        self.path = str(path)
        self.line = line
        where = f"config file '{self.path}'"
        if line is not None:
            where += f", line {line}"
        Exception.__init__(self, f"{where}: {message}")


# --------------------------------------------------------------------------- public API


def load_config(path: str | Path | None, overrides: Sequence[str] = (), *,
                check: bool = True) -> RunConfig:
    """Load a run configuration.

    Parameters
    ----------
    path : YAML file, or None for the schema defaults.
    overrides : dotlist ``key=value`` strings applied after the file, in order
        (e.g. ``seed=3``, ``facility.rows=10``, ``facility.row_serving=[a,b]``).
    check : run :func:`distgen.config.validate.validate` on the result (without the model
        library; call ``validate(cfg, known_serving=...)`` once the library is loaded).

    Raises
    ------
    ConfigFileError : the file is missing or not valid YAML (names the file and line).
    ConfigError : unknown key (lists the allowed keys, suggests a close match), wrong type
        (names the value and the expected type) or invalid value.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(overrides, str):
        overrides = [overrides]

    layers = [OmegaConf.create(config_to_dict(RunConfig()))]
    relative: dict[str, str] = {}  # key -> path as written in the file, when made absolute
    if path is not None:
        data = _read_yaml(Path(path))
        _check_keys(RunConfig, data, "", f"in {path}")
        relative = _resolve_file_paths(data, Path(path))
        layers.append(OmegaConf.create(_drop_null_sections(RunConfig, data)))
    for ov in overrides:
        layer = _parse_override(ov)
        relative.pop(ov.split("=", 1)[0].strip(), None)  # an override's path is the user's own
        layers.append(layer)

    try:
        merged = OmegaConf.merge(*layers)
        assert isinstance(merged, DictConfig)
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "<config>"
        msg = (getattr(e, "msg", None) or str(e)).strip().splitlines()[0]
        raise ConfigError(str(key), msg) from e

    cfg = config_from_dict(data)
    _check_resolved_paths(cfg, relative, path)
    if check:
        from distgen.config.validate import validate
        validate(cfg)
    return cfg


def config_from_dict(data: Mapping) -> RunConfig:
    """Build a RunConfig from plain nested mappings (e.g. a manifest's resolved config).

    Missing keys take the schema defaults; lists become tuples; ints are accepted for floats; a
    single value is accepted where a list is expected (``row_serving: qwen3-8b_A100_tp1``).
    Unknown keys and wrong types raise :class:`ConfigError`; values are not range-checked.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("<config>", f"expected a mapping of keys, got {_show(data)}")
    return _build(RunConfig, data, "")


def config_to_dict(cfg) -> dict:
    """The resolved configuration as plain JSON-able values (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


def config_hash(cfg) -> str:
    """sha256 hex digest of the canonical JSON of :func:`config_to_dict` (sorted keys)."""
    text = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- file / overrides

#: Keys holding file or folder paths: written in a config file, a relative path is taken
#: relative to that file's folder (as sweeps do for their base config); given as an override
#: on the command line, relative to the current folder.
PATH_KEYS = ("traffic.replay.path", "model_library")


def _resolve_file_paths(data: dict, path: Path) -> dict[str, str]:
    """Make the relative paths of :data:`PATH_KEYS` in ``data`` (one YAML file's keys)
    absolute, relative to the file's folder; return key -> the path as written."""
    folder = path.parent
    written = {}
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = node.get(leaf)
        if isinstance(value, str) and value and "${" not in value \
                and not Path(value).expanduser().is_absolute():
            node[leaf] = os.path.abspath(folder / value)
            written[key] = value
    return written


def _check_resolved_paths(cfg: RunConfig, relative: dict[str, str], path) -> None:
    """A path made absolute by :func:`_resolve_file_paths` that does not exist is reported
    with where it was looked for (when the run uses it)."""
    uses = {"traffic.replay.path": cfg.traffic.mode == "replay",
            "model_library": cfg.model_library is not None}
    for key, written in relative.items():
        value = cfg.traffic.replay.path if key == "traffic.replay.path" else cfg.model_library
        if uses[key] and not Path(value).exists():
            raise ConfigError(key, f"not found: {value} (the path {written!r} in {path} is "
                                   f"taken relative to that file's folder)")


def _read_yaml(path: Path) -> dict:
    import yaml
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not path.exists():
        raise ConfigFileError(path, "file not found")
    if not path.is_file():
        raise ConfigFileError(path, "not a file")
    try:
        conf = OmegaConf.load(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigFileError(path, f"invalid YAML: {problem}", line=line) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(path, f"cannot read: {e}") from None
    except OmegaConfBaseException as e:
        raise ConfigFileError(path, str(e).splitlines()[0]) from None
    if not isinstance(conf, DictConfig):
        raise ConfigFileError(path, "the top level must be a mapping of keys (seed, facility, "
                                    "traffic, ...), not a list")
    data = OmegaConf.to_container(conf, resolve=False)
    return data or {}


def _parse_override(ov: str):
    import yaml
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(ov, str) or "=" not in ov:
        raise ConfigError(str(ov), "an override must look like key=value "
                                   "(e.g. seed=3, facility.rows=10)")
    key, value = ov.split("=", 1)
    key = key.strip()
    if not _KEY_RE.match(key):
        raise ConfigError(key, f"invalid key in override {ov!r}; expected a dotted key such as "
                               f"facility.rows")
    try:
        layer = OmegaConf.from_dotlist([f"{key}={value}"])
    except yaml.YAMLError as e:  # the value is parsed as YAML: '[a,' is not a list
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(key, f"cannot parse the value of override {ov!r} as YAML: {problem} "
                               f"(lists look like [a,b], mappings like {{a: 1}})") from e
    except OmegaConfBaseException as e:
        raise ConfigError(key, f"cannot parse override {ov!r}: {str(e).splitlines()[0]}") from e
    data = OmegaConf.to_container(layer, resolve=False)
    _check_keys(RunConfig, data, "", f"in override {ov!r}")
    return OmegaConf.create(_drop_null_sections(RunConfig, data))


# --------------------------------------------------------------------------- schema walking


@cache
def _hints(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _dc_type(tp):
    """The dataclass type behind ``tp`` (also inside Optional), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if dataclasses.is_dataclass(a):
                return a
    return None


def _unknown_key(cls, key: str, prefix: str, where: str = "") -> ConfigError:
    allowed = _fields(cls)
    dotted = prefix + str(key)
    level = f"under '{prefix[:-1]}'" if prefix else "at the top level"
    msg = f"unknown key{' (' + where + ')' if where else ''}; allowed keys {level}: " \
          f"{', '.join(allowed)}"
    close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    if close:
        msg += f"; did you mean '{prefix}{close[0]}'?"
    return ConfigError(dotted, msg)


def _check_keys(cls, data: Mapping, prefix: str, where: str) -> None:
    """Reject unknown keys (and scalars where a section is expected) in one layer."""
    hints = _hints(cls)
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(cls, key, prefix, where)
        sub = _dc_type(hints[key])
        if sub is not None and value is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(prefix + key,
                                  f"expected a section with keys {', '.join(_fields(sub))} "
                                  f"({where}), got {_show(value)}")
            _check_keys(sub, value, f"{prefix}{key}.", where)


def _drop_null_sections(cls, data: Mapping) -> dict:
    """``facility:`` with nothing under it (null) means "defaults", not "no facility"."""
    hints = _hints(cls)
    out = {}
    for key, value in data.items():
        sub = _dc_type(hints.get(key))
        if sub is not None:
            if value is None:
                continue
            value = _drop_null_sections(sub, value)
        out[key] = value
    return out


def _build(cls, data: Mapping, prefix: str):
    hints = _hints(cls)
    for key in data:
        if key not in hints:
            raise _unknown_key(cls, key, prefix)
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _type_name(tp) -> str:
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a section ({', '.join(_fields(tp))})"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_type_name(k)} to {_type_name(v)}"
    return {int: "int", float: "float", str: "string", bool: "bool (true/false)"}.get(
        tp, getattr(tp, "__name__", str(tp)))


def _show(value) -> str:
    return f"{value!r} ({type(value).__name__})"


def _type_error(key: str, tp, value) -> ConfigError:
    return ConfigError(key, f"expected {_type_name(tp)}, got {_show(value)}")


def _coerce(tp, value, key: str):
    if dataclasses.is_dataclass(tp):
        if value is None:
            return tp()
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _type_error(key, tp, value)
        for a in (a for a in args if a is not type(None)):
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                if e.key != key:  # an element further down (e.g. key[3]) is wrong: say which
                    raise
        raise _type_error(key, tp, value)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise _type_error(key, tp, value)
        return {_coerce(key_tp, k, key): _coerce(value_tp, v, f"{key}.{k}")
                for k, v in value.items()}
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return (_coerce(item, value, key),)  # a single value: a one-element list
        raise _type_error(key, tp, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _type_error(key, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _type_error(key, tp, value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _type_error(key, tp, value)
    raise TypeError(f"config schema type {tp!r} of {key} is not supported")  # a schema bug


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
