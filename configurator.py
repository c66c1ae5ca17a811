"""
How a run's settings are assembled: a config dataclass's defaults, then config files (plain Python assignments,
like the ones in config/), then --key=value overrides, in argument order. Each value is type-checked; an unknown
key is an error that suggests the closest one; `--help` lists every setting with its default and meaning.
"""

import ast
import dataclasses
import difflib
import inspect
import io
import math
import sys
import tokenize
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A bad setting or bad data: reported in one line that says what to do, without a traceback."""


def parse_value(key, text, expected):
    """'--key=value' text to the type of the field, with an error that names the key."""
    if expected is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--{key}={text}: expected True or False")
    if expected is str:
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        # float('nan') / 'inf' are not literals; accept them here so that validation can name the real problem
        if expected is float and text.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
            return float(text)
        raise ConfigError(f"--{key}={text}: expected {'an' if expected is int else 'a'} {expected.__name__}") from None


def set_key(cfg, key, value, source):
    fields = {f.name: f.type for f in dataclasses.fields(cfg)}
    derived = getattr(cfg, "DERIVED", {})
    if key in derived:
        raise ConfigError(f"{key} cannot be set ({source}): {derived[key]}")
    if key not in fields:
        for prefix, hint in getattr(cfg, "UNKNOWN_KEY_HINTS", {}).items():  # a key of another program's configs
            if key.startswith(prefix) and source != "the command line":
                raise ConfigError(f"unknown config key {key!r} in {source}: " + hint.format(source=source))
        close = difflib.get_close_matches(key, [f for f in fields if f not in derived], n=1)
        raise ConfigError(f"unknown config key {key!r} in {source}" + (f"; did you mean {close[0]!r}?" if close else ""))
    expected = fields[key]
    if isinstance(value, str) and expected is not str and source == "the command line":  # config files are typed
        value = parse_value(key, value, expected)
    if expected is float and type(value) is int:
        value = float(value)
    if value is None and getattr(type(cfg), key, 0) is None:  # a setting whose default None means 'derived'
        pass
    elif type(value) is not expected:
        raise ConfigError(f"{key} must be {'an' if expected is int else 'a'} {expected.__name__}, got {value!r} "
                          f"({type(value).__name__}) in {source}")
    if expected is float and value is not None and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value} in {source}")
    setattr(cfg, key, value)


def exec_config_file(path):
    """The assignments of a config file. Config files may import each other (from config.base import *)."""
    if not Path(path).is_file():
        raise ConfigError(f"config file {path} not found (config files live in config/)")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    scope = {}
    try:
        exec(compile(Path(path).read_text(), path, "exec"), scope)
    except (Exception, SystemExit, KeyboardInterrupt) as e:  # a typo, or sys.exit(): name the file and line
        lines = [e.lineno] if isinstance(e, SyntaxError) else [
            f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        what = {SystemExit: f"it calls sys.exit({e})", KeyboardInterrupt: "KeyboardInterrupt (a raise, or Ctrl-C)"
                }.get(type(e), f"{type(e).__name__}: {e}")
        raise ConfigError(f"config file {path}" + (f", line {lines[-1]}" if lines else "") + f": {what}. Config "
                          f"files hold plain assignments such as n_layer = 6") from None
    return {k: v for k, v in scope.items()
            if not k.startswith("_") and not callable(v) and type(v).__name__ != "module"}


def load(cls, argv):
    """An instance of the dataclass cls from config files and --key=value overrides, in order."""
    cfg = cls()
    for arg in argv:
        if arg.startswith("--"):
            key, sep, value = arg[2:].partition("=")
            if not sep:
                raise ConfigError(f"{arg}: overrides are written --key=value")
            set_key(cfg, key, value, "the command line")
        else:
            for key, value in exec_config_file(arg).items():
                set_key(cfg, key, value, arg)
    return cfg


def field_comments(cls):
    """{field: (group, comment)} from the source of cls and its dataclass bases: a field's trailing comment is its
    meaning, and a comment line of its own starts a group."""
    out = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        group, pending = klass.__name__, None
        for tok in tokenize.generate_tokens(io.StringIO(inspect.getsource(klass)).readline):
            if tok.type == tokenize.COMMENT and tok.line.strip().startswith("#"):
                group = tok.string.lstrip("# ").strip()
            elif tok.type == tokenize.NAME and tok.start[1] == 4 and tok.string == "def":
                break  # the methods: no more fields
            elif tok.type == tokenize.NAME and tok.start[1] == 4 and pending is None:
                pending = tok.string
            elif tok.type == tokenize.COMMENT and pending:
                out[pending] = (group, tok.string.lstrip("# ").strip())
            if tok.type in (tokenize.NEWLINE, tokenize.NL):
                if pending and pending not in out:
                    out[pending] = (group, "")
                pending = None
    return out


def help_text(cls, extra=None):
    """Every setting of cls grouped as in its source, with its default and meaning. extra: {field: (group, help)}
    for fields declared elsewhere (the normalizers' settings)."""
    comments = {**field_comments(cls), **(extra or {})}
    derived = getattr(cls, "DERIVED", {})
    groups = {}
    for f in dataclasses.fields(cls):
        if f.name in derived:
            continue
        group, meaning = comments.get(f.name, ("other", ""))
        default = f.default if f.default is not dataclasses.MISSING else f"{f.default_factory()} (here)"
        groups.setdefault(group, []).append(f"  {f'--{f.name}={default}':<36} {meaning}")
    return "\n".join(f"{group}:\n" + "\n".join(lines) for group, lines in groups.items())
