"""Find method folders without registration: every ``methods/<name>/method.py`` holding one ``Method`` subclass.

A broken folder (import error, no subclass, bad config.yaml) is reported by name and hides nothing else.

A folder's ``config.yaml`` may declare named **variants** (the paper's ablations): ``flip@mask75`` is the method
``flip`` with the overrides of its variant ``mask75`` and, where the paper's mechanism needs it, a batch
multiplier that the harness applies (and matches in FLOPs like any other cost), a wider image tower (a teacher
for UTA: ``clip@wide``), or a budget in samples instead of matched FLOPs. A variant is a run of its own, with its
own results folder and row; ``--methods all`` runs each method's default only.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import yaml

import torch

from benchmark import methods_dir
from benchmark.errors import UserError
from benchmark.method import Context, Method
from benchmark.model import build_clip

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")  # method names reach paths and sbatch job names ($ takes "x\n")
VARIANT_KEYS = ("summary", "set", "batch_multiplier", "vision_width_multiplier", "match")
VARIANT_MATCHES = ("samples",)     # a variant's own budget, instead of the command's --match


@dataclass(frozen=True)
class Variant:
    """A named set of config overrides of one method (``config.yaml`` ``variants:``)."""

    name: str
    summary: str = ""
    overrides: dict = field(default_factory=dict)
    batch_multiplier: int = 1      # the run's global batch = the scale's x this (learning rate scaled linearly)
    vision_width_multiplier: int = 1   # the image tower's width = the scale's x this (heads follow head_width)
    match: str = ""                # "samples": trained on the scale's samples whatever --match ("": the command's)


@dataclass
class MethodInfo:
    name: str
    folder: Path
    cls: type[Method] | None = None
    defaults: dict = field(default_factory=dict)
    scale_overrides: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    error: str = ""
    variants: dict[str, Variant] = field(default_factory=dict)
    variant: Variant | None = None     # set on the info of one variant (``name`` is then ``base@variant``)

    @property
    def ok(self) -> bool:
        return self.cls is not None and not self.error

    @property
    def base(self) -> str:
        return self.name.split("@", 1)[0]

    @property
    def batch_multiplier(self) -> int:
        return self.variant.batch_multiplier if self.variant else 1

    def model_scale(self, scale):
        """``scale`` with this run's architecture: the scale's model, its image tower widened by a variant's
        ``vision_width_multiplier`` (the text tower and the embedding width stay the scale's)."""
        mult = self.variant.vision_width_multiplier if self.variant else 1
        if mult == 1:
            return scale
        vision = {**scale.model["vision_cfg"], "width": scale.model["vision_cfg"]["width"] * mult}
        return dataclasses.replace(scale, model={**scale.model, "vision_cfg": vision})

    def match_for(self, match: str) -> str:
        """The budget this run is planned with: the variant's own, else the command's ``--match``."""
        return (self.variant.match if self.variant else "") or match

    def with_variant(self, name: str) -> "MethodInfo":
        if name not in self.variants:
            raise UserError(f"unknown variant {name!r} of method {self.name!r} (--methods {self.name}@{name}); "
                            f"its variants: {', '.join(self.variants) or 'none'}")
        return dataclasses.replace(self, name=f"{self.name}@{name}", variant=self.variants[name])

    def config(self, scale: str, overrides: dict | None = None) -> dict:
        """defaults <- per-scale values in config.yaml <- the variant's overrides <- command-line overrides, every
        key checked (its type against the default's, its value against the range or choices declared under
        ``ranges:``)."""
        cfg = dict(self.defaults)
        sources = {key: f"{self.folder / 'config.yaml'} (defaults)" for key in cfg}
        variant = self.variant.overrides if self.variant else {}
        for source, values in ((f"{self.folder / 'config.yaml'} (scales.{scale})", self.scale_overrides.get(scale, {})),
                               (f"{self.folder / 'config.yaml'} (variants.{self.variant.name if self.variant else ''})",
                                variant),
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


def overrides_for(name: str, overrides: dict) -> dict:
    """The ``--set`` values of a run: ``--set flip.KEY=`` applies to flip and its variants, ``--set flip@mask75.KEY=``
    to that variant alone (and wins)."""
    base = name.split("@", 1)[0]
    return {**overrides.get(base, {}), **(overrides.get(name, {}) if name != base else {})}


def _coerce(method: str, key: str, default, value, source: str):
    if default is None or value is None or isinstance(value, type(default)):
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise UserError(f"{source}: {method}.{key} must be {type(default).__name__} like the default {default!r}, "
                    f"got {value!r}")


def _load_config(folder: Path) -> tuple[dict, dict, dict, dict[str, "Variant"]]:
    path = folder / "config.yaml"
    if not path.exists():
        return {}, {}, {}, {}
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not a text file ({e}); it must be YAML with 'defaults' and 'scales'") from None
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict) or set(raw) - {"defaults", "scales", "ranges", "variants"}:
        raise ValueError(f"{path} must be a mapping with only the keys 'defaults', 'scales', 'ranges' and 'variants'")
    defaults, scales = raw.get("defaults") or {}, raw.get("scales") or {}
    if not isinstance(defaults, dict) or not isinstance(scales, dict) or \
            not all(isinstance(v, dict) for v in scales.values()):
        raise ValueError(f"{path}: 'defaults' must map keys to values and 'scales' each scale to a mapping")
    for scale, values in scales.items():
        unknown = set(values) - set(defaults)
        if unknown:
            raise ValueError(f"{path}: scales.{scale} sets unknown key(s) {sorted(unknown)}; "
                             f"add them to 'defaults' first")
    return (defaults, scales, _check_ranges(path, defaults, raw.get("ranges") or {}),
            _load_variants(path, raw.get("variants") or {}, defaults))


def _load_variants(path: Path, raw, defaults: dict) -> dict[str, Variant]:
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: 'variants' must map variant names to {{{', '.join(VARIANT_KEYS)}}}")
    out = {}
    for name, v in raw.items():
        where = f"{path}: variants.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"{path}: variant name {name!r} must be lower-case letters, digits and underscores")
        if not isinstance(v, dict) or set(v) - set(VARIANT_KEYS):
            raise ValueError(f"{where} must be a mapping with only the keys {', '.join(VARIANT_KEYS)}")
        overrides, mult = v.get("set") or {}, v.get("batch_multiplier", 1)
        if not isinstance(overrides, dict) or set(overrides) - set(defaults):
            raise ValueError(f"{where}.set must map keys of 'defaults' to values; unknown: "
                             f"{sorted(set(overrides) - set(defaults)) if isinstance(overrides, dict) else overrides}")
        width, match = v.get("vision_width_multiplier", 1), v.get("match", "")
        for key, value in (("batch_multiplier", mult), ("vision_width_multiplier", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{where}.{key} must be a positive integer, got {value!r}")
        if match and match not in VARIANT_MATCHES:
            raise ValueError(f"{where}.match must be one of {', '.join(VARIANT_MATCHES)} (or absent: the "
                             f"command's --match), got {match!r}")
        if not overrides and mult == 1 and width == 1 and not match:
            raise ValueError(f"{where} changes nothing: give it 'set' overrides, a batch_multiplier, a "
                             "vision_width_multiplier or a match")
        out[name] = Variant(name, str(v.get("summary") or ""), dict(overrides), mult, width, match)
    return out


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
                info.defaults, info.scale_overrides, info.ranges, info.variants = _load_config(folder)
                for scale in ["defaults", *info.scale_overrides]:   # the folder's own values obey its ranges
                    info.config(scale)
                    for v in info.variants:                          # and so do its variants'
                        info.with_variant(v).config(scale)
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
    """``all`` (each method's default) or comma-separated names, ``method`` or ``method@variant`` -> method infos,
    each checked. Bad names raise UserError."""
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
        base, at, variant = n.partition("@")
        if base not in infos:
            raise UserError(f"unknown method {base!r} (--methods); available: {', '.join(healthy) or 'none'}")
        if not infos[base].ok:
            raise UserError(f"method folder {infos[base].folder} is broken: {infos[base].error}")
        info = infos[base].with_variant(variant) if at else infos[base]
        if info.name not in [i.name for i in out]:
            out.append(info)
    if not out:
        raise UserError(f"--methods is empty; available: {', '.join(healthy)}")
    return out


def build_method(method: str | MethodInfo, scale, *, seed: int = 0, device="cpu", config_scale: str | None = None,
                 overrides: dict | None = None, cfg: dict | None = None, rank: int = 0, world_size: int = 1,
                 results_root: Path | None = None, root: Path | None = None) -> Method:
    """The one way a method is built (by ``runs``, ``benchmark perf`` and the tests): ``build_clip(scale, seed)``
    wrapped by the method's class with its config (``cfg``, else config.yaml for ``config_scale``, default the
    scale's name, with ``overrides``) and a ``Context``; on ``device``, in train mode. The torch RNG is then reset
    to ``seed``, so the masks of a run are a function of its seed."""
    info = method if isinstance(method, MethodInfo) else resolve([method], root)[0]
    if cfg is None:
        cfg = info.config(config_scale or scale.name, overrides)
    ctx = context(info, cfg, scale, device=torch.device(device), seed=seed, rank=rank, world_size=world_size,
                  results_root=Path(results_root) if results_root is not None else None)
    built = info.cls(build_clip(ctx.scale, seed), cfg, ctx).to(device).train()
    torch.manual_seed(seed)
    return built


def context(info: MethodInfo, cfg: dict, scale, **fields) -> Context:
    """The ``Context`` of a run of ``info`` at ``scale`` (the scale as given, before any variant widens it): its
    scale carries the run's own architecture, and ``required_models`` the architecture of every run it
    ``requires`` (a teacher run may be a wider variant, e.g. ``clip@wide``)."""
    required = {name: resolve([name], info.folder.parent)[0].model_scale(scale).model
                for name in info.cls.requires(cfg)}
    return Context(scale=info.model_scale(scale), required_models=required, **fields)
