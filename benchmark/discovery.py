"""Find method folders without registration: every ``methods/<name>/method.py`` holding one ``Method`` subclass.

A broken folder (import error, no subclass, bad config.yaml) is reported by name and hides nothing else.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from benchmark import REPO_ROOT
from benchmark.errors import UserError
from benchmark.method import Method

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")  # method names reach paths and sbatch job names ($ takes "x\n")


def methods_dir() -> Path:
    return Path(os.environ.get("MASKBENCH_METHODS", REPO_ROOT / "methods"))


@dataclass
class MethodInfo:
    name: str
    folder: Path
    cls: type[Method] | None = None
    defaults: dict = field(default_factory=dict)
    scale_overrides: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.cls is not None and not self.error

    def config(self, scale: str, overrides: dict | None = None) -> dict:
        """defaults <- per-scale values in config.yaml <- command-line overrides, every key checked (its type
        against the default's, its value against the range or choices declared under ``ranges:``)."""
        cfg = dict(self.defaults)
        sources = {key: f"{self.folder / 'config.yaml'} (defaults)" for key in cfg}
        for source, values in ((f"{self.folder / 'config.yaml'} (scales.{scale})", self.scale_overrides.get(scale, {})),
                               ("--set", overrides or {})):
            for key, value in values.items():
                if key not in self.defaults:
                    raise UserError(f"{source}: unknown key {key!r} for method {self.name!r}; "
                                    f"known keys: {', '.join(sorted(self.defaults))}")
                cfg[key] = _coerce(self.name, key, self.defaults[key], value, source)
                sources[key] = source
        for key, value in cfg.items():
            if key in self.ranges:
                problem = _out_of_range(self.ranges[key], value, cfg)
                if problem:
                    raise UserError(f"{sources[key]}: {self.name}.{key}={value!r} {problem} (declared under "
                                    f"ranges: in {self.folder / 'config.yaml'}); pass a value inside it, e.g. "
                                    f"--set {self.name}.{key}=VALUE")
            elif key.endswith("ratio") and isinstance(value, (int, float)) and not 0 <= value < 1:
                raise UserError(f"{self.name}.{key}={value} is outside [0, 1); a mask ratio is the fraction of "
                                "patches dropped, e.g. 0.5")
        return cfg


# ``ranges:`` in a method's config.yaml: per key, a list of choices, or a mapping of bounds: ``min``/``max``
# (inclusive), ``above``/``below`` (exclusive), ``multiple_of`` (a number or another key), ``file: true`` (a
# path that, when set, must be an existing file). Discovery checks the defaults and every scale against them.
_BOUNDS = {"min": (lambda v, b: v >= b, "below the minimum {b}"), "max": (lambda v, b: v <= b, "above the maximum {b}"),
           "above": (lambda v, b: v > b, "not above {b}"), "below": (lambda v, b: v < b, "not below {b}")}
_RANGE_KEYS = set(_BOUNDS) | {"multiple_of", "file"}


def _interval(rule: dict) -> str:
    lo = f"[{rule['min']}" if "min" in rule else f"({rule['above']}" if "above" in rule else "(-inf"
    hi = f"{rule['max']}]" if "max" in rule else f"{rule['below']})" if "below" in rule else "inf)"
    return f"{lo}, {hi}"


def _out_of_range(rule, value, cfg: dict) -> str:
    """Why ``value`` breaks ``rule`` ('' when it does not)."""
    if isinstance(rule, list):
        return "" if value in rule else f"is not one of {', '.join(map(str, rule))}"
    if "file" in rule:
        if value and not Path(str(value)).expanduser().is_file():
            return "does not name an existing file"
        return ""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"must be a number in {_interval(rule)}"
    for bound, (ok, why) in _BOUNDS.items():
        if bound in rule and not ok(value, rule[bound]):
            return f"is outside {_interval(rule)}"
    if "multiple_of" in rule:
        other = rule["multiple_of"]
        factor = cfg.get(other) if isinstance(other, str) else other
        if isinstance(factor, int) and factor > 0 and value % factor:
            return f"must be a multiple of {other}" + (f"={factor}" if isinstance(other, str) else "")
    return ""


def _check_ranges(path: Path, defaults: dict, ranges) -> dict:
    if not isinstance(ranges, dict):
        raise ValueError(f"{path}: 'ranges' must map config keys to a list of choices or a mapping of bounds")
    for key, rule in ranges.items():
        if key not in defaults:
            raise ValueError(f"{path}: ranges.{key} names no key of 'defaults'")
        if isinstance(rule, list):
            if not rule:
                raise ValueError(f"{path}: ranges.{key} lists no choices")
            continue
        if not isinstance(rule, dict) or not rule or set(rule) - _RANGE_KEYS:
            raise ValueError(f"{path}: ranges.{key} must be a list of choices or a mapping with keys among "
                             f"{', '.join(sorted(_RANGE_KEYS))}")
        for bound in set(rule) & set(_BOUNDS):
            if not isinstance(rule[bound], (int, float)) or isinstance(rule[bound], bool):
                raise ValueError(f"{path}: ranges.{key}.{bound} must be a number")
        if isinstance(rule.get("multiple_of"), str) and rule["multiple_of"] not in defaults:
            raise ValueError(f"{path}: ranges.{key}.multiple_of names no key of 'defaults'")
    return ranges


def _coerce(method: str, key: str, default, value, source: str):
    if default is None or value is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise UserError(f"{source}: {method}.{key} must be {type(default).__name__} like the default {default!r}, "
                    f"got {value!r}")


def _load_config(folder: Path) -> tuple[dict, dict, dict]:
    path = folder / "config.yaml"
    if not path.exists():
        return {}, {}, {}
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file ({e}); it must be YAML with 'defaults' and 'scales'") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or set(raw) - {"defaults", "scales", "ranges"}:
        raise ValueError(f"{path} must be a mapping with only the keys 'defaults', 'scales' and 'ranges'")
    defaults, scales = raw.get("defaults") or {}, raw.get("scales") or {}
    if not isinstance(defaults, dict) or not isinstance(scales, dict) or \
            not all(isinstance(v, dict) for v in scales.values()):
        raise ValueError(f"{path}: 'defaults' must map keys to values and 'scales' each scale to a mapping")
    for scale, values in scales.items():
        unknown = set(values) - set(defaults)
        if unknown:
            raise ValueError(f"{path}: scales.{scale} sets unknown key(s) {sorted(unknown)}; "
                             f"add them to 'defaults' first")
    return defaults, scales, _check_ranges(path, defaults, raw.get("ranges") or {})


def _import_method(name: str, folder: Path) -> type[Method]:
    module_name = f"maskbench_methods.{name}"
    spec = importlib.util.spec_from_file_location(module_name, folder / "method.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    said = io.StringIO()                 # what the import writes to stderr: shown, unless it ends in SystemExit
    try:
        with contextlib.redirect_stderr(said):
            spec.loader.exec_module(module)
    except SystemExit as e:
        sys.modules.pop(module_name, None)
        last = [ln for ln in said.getvalue().splitlines() if ln.strip()]
        printed = f"; it printed {last[-1].strip()!r}" if last else ""
        raise SystemExit(f"{e.code}{_where(e)}{printed}") from None
    except BaseException:
        sys.modules.pop(module_name, None)
        sys.stderr.write(said.getvalue())
        raise
    sys.stderr.write(said.getvalue())
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method
             and obj.__module__ == module_name]
    if len(found) != 1:
        raise ValueError(f"{folder / 'method.py'} must define exactly one Method subclass, found "
                         f"{len(found)}{': ' + ', '.join(c.__name__ for c in found) if found else ''}")
    return found[0]


def _where(e: BaseException) -> str:
    """ (file:line) of the innermost frame in a method folder, else of the innermost frame."""
    frames = traceback.extract_tb(e.__traceback__) if e.__traceback__ else []
    own = [f for f in frames if Path(f.filename).name in ("method.py", "config.yaml")] or frames
    return f" ({Path(own[-1].filename).name}:{own[-1].lineno})" if own else ""


_CACHE: dict[Path, dict[str, MethodInfo]] = {}


def discover(root: Path | None = None) -> dict[str, MethodInfo]:
    """Every method folder under ``root``, sorted by name; broken ones carry an ``error``."""
    root = Path(root or methods_dir())
    if root in _CACHE:
        return _CACHE[root]
    infos: dict[str, MethodInfo] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if not (folder / "method.py").exists() or folder.name.startswith(("_", ".")):
            continue
        info = MethodInfo(folder.name, folder)
        if not NAME_RE.match(folder.name):
            info.error = "folder name must be lower-case letters, digits and underscores"
        else:
            try:
                info.defaults, info.scale_overrides, info.ranges = _load_config(folder)
                for scale in ["defaults", *info.scale_overrides]:   # the folder's own values obey its ranges
                    info.config(scale)
                info.cls = _import_method(folder.name, folder)
            except SystemExit as e:  # sys.exit() or argparse's parse_args() at import: the folder is broken
                info.error = (f"{folder / 'method.py'} exits when imported (SystemExit: {e.code}), e.g. "
                              "argparse's parse_args() or sys.exit() at module level; move it under "
                              "`if __name__ == \"__main__\":`")
            except Exception as e:   # noqa: BLE001 - any failure of a user's folder is reported, not raised
                info.error = f"{type(e).__name__}: {e}{_where(e)}"
        infos[folder.name] = info
    _CACHE[root] = infos
    return infos


def resolve(names: str | list[str], root: Path | None = None) -> list[MethodInfo]:
    """``all`` or comma-separated names -> method infos, each checked. Bad names raise UserError."""
    infos = discover(root)
    healthy = [i.name for i in infos.values() if i.ok]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names == ["all"]:
        broken = [i for i in infos.values() if not i.ok]
        if broken:
            raise UserError("broken method folder(s): " + "; ".join(f"{i.name}: {i.error}" for i in broken)
                            + " -- fix them or pass --methods with the healthy ones: " + ",".join(healthy))
        return [infos[n] for n in healthy]
    out = []
    for n in names:
        if n not in infos:
            raise UserError(f"unknown method {n!r} (--methods); available: {', '.join(healthy) or 'none'}")
        if not infos[n].ok:
            raise UserError(f"method folder {infos[n].folder} is broken: {infos[n].error}")
        if infos[n] not in out:
            out.append(infos[n])
    if not out:
        raise UserError(f"--methods is empty; available: {', '.join(healthy)}")
    return out
