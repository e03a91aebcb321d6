"""Find method folders without registration: every ``methods/<name>/method.py`` holding one ``Method`` subclass.

A broken folder (import error, no subclass, bad config.yaml) is reported by name and hides nothing else.
"""
from __future__ import annotations

import importlib.util
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
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.cls is not None and not self.error

    def config(self, scale: str, overrides: dict | None = None) -> dict:
        """defaults <- per-scale values in config.yaml <- command-line overrides, every key checked."""
        cfg = dict(self.defaults)
        for source, values in ((f"{self.folder / 'config.yaml'} (scales.{scale})", self.scale_overrides.get(scale, {})),
                               ("--set", overrides or {})):
            for key, value in values.items():
                if key not in self.defaults:
                    raise UserError(f"{source}: unknown key {key!r} for method {self.name!r}; "
                                    f"known keys: {', '.join(sorted(self.defaults))}")
                cfg[key] = _coerce(self.name, key, self.defaults[key], value, source)
        for key, value in cfg.items():
            if key.endswith("ratio") and isinstance(value, (int, float)) and not 0 <= value < 1:
                raise UserError(f"{self.name}.{key}={value} is outside [0, 1); a mask ratio is the fraction of "
                                "patches dropped, e.g. 0.5")
        return cfg


def _coerce(method: str, key: str, default, value, source: str):
    if default is None or value is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise UserError(f"{source}: {method}.{key} must be {type(default).__name__} like the default {default!r}, "
                    f"got {value!r}")


def _load_config(folder: Path) -> tuple[dict, dict]:
    path = folder / "config.yaml"
    if not path.exists():
        return {}, {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or set(raw) - {"defaults", "scales"}:
        raise ValueError(f"{path} must be a mapping with only the keys 'defaults' and 'scales'")
    defaults, scales = raw.get("defaults") or {}, raw.get("scales") or {}
    if not isinstance(defaults, dict) or not isinstance(scales, dict) or \
            not all(isinstance(v, dict) for v in scales.values()):
        raise ValueError(f"{path}: 'defaults' must map keys to values and 'scales' each scale to a mapping")
    for scale, values in scales.items():
        unknown = set(values) - set(defaults)
        if unknown:
            raise ValueError(f"{path}: scales.{scale} sets unknown key(s) {sorted(unknown)}; "
                             f"add them to 'defaults' first")
    return defaults, scales


def _import_method(name: str, folder: Path) -> type[Method]:
    module_name = f"maskbench_methods.{name}"
    spec = importlib.util.spec_from_file_location(module_name, folder / "method.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    found = [obj for obj in vars(module).values()
             if isinstance(obj, type) and issubclass(obj, Method) and obj is not Method
             and obj.__module__ == module_name]
    if len(found) != 1:
        raise ValueError(f"{folder / 'method.py'} must define exactly one Method subclass, found "
                         f"{len(found)}{': ' + ', '.join(c.__name__ for c in found) if found else ''}")
    return found[0]


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
                info.defaults, info.scale_overrides = _load_config(folder)
                info.cls = _import_method(folder.name, folder)
            except Exception as e:   # noqa: BLE001 - any failure of a user's folder is reported, not raised
                last = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
                where = f" ({Path(last.filename).name}:{last.lineno})" if last else ""
                info.error = f"{type(e).__name__}: {e}{where}"
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
