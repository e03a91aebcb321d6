"""Scales from YAML files: ``--scale FILE.yaml``, or ``--scale NAME`` for ``scales/NAME.yaml`` (scales/README.md).

A scale file sets any field of ``benchmark.scales.Scale``; ``extends: <built-in>`` starts from a built-in scale
(its per-scale method values apply too) and overrides what the file names. The model is an open_clip model
config name (read from open_clip's own ``model_configs/``), or a mapping of ``open_clip.CLIP`` arguments
(``config: NAME`` plus overrides, or a full ``embed_dim``/``vision_cfg``/``text_cfg``). The budget is ``samples``,
or ``epochs`` (x ``dataset_size``, counted from the training data when not given). ``--set scale.KEY=VALUE``
overrides any field of any scale (``scale.optim.lr=1e-3``, ``scale.model.vision_cfg.layers=4``).

Every field is checked: a wrong one is a ``UserError`` naming the file, the field and the fix.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import types
import typing
from pathlib import Path

import yaml

from benchmark import REPO_ROOT
from benchmark.errors import UserError
from benchmark.scales import EMBEDDED_SUITE, SCALES, Data, Optim, Resources, Scale

SCALES_DIR = REPO_ROOT / "scales"
BUDGET_FIELDS = ("epochs", "dataset_size")          # turned into ``samples``
CLIP_KWARGS = ("embed_dim", "vision_cfg", "text_cfg", "quick_gelu", "init_logit_scale", "init_logit_bias",
               "nonscalar_logit_scale")
DATA_KINDS = ("embedded", "webdataset", "csv")


def is_scale_file(arg: str) -> bool:
    return arg.endswith((".yaml", ".yml")) or "/" in arg


def scale_name(arg: str) -> str:
    """The results-folder name of ``--scale ARG`` (a built-in's name, or a scale file's ``name``)."""
    if arg in SCALES:
        return arg
    if is_scale_file(arg) or (SCALES_DIR / f"{arg}.yaml").exists():
        path = Path(arg) if is_scale_file(arg) else SCALES_DIR / f"{arg}.yaml"
        name = _read(path).get("name", path.stem)       # the name only: the scale's data need not be here
        return name if isinstance(name, str) else path.stem
    return arg


def load_scale(arg: str, sets: list[str] | tuple = (), data: str | None = None) -> tuple[Scale, dict | None]:
    """(scale, source): ``arg`` a built-in name, a scale file, or a name in ``scales/``; ``sets`` the
    ``KEY=VALUE`` overrides of ``--set scale.KEY=VALUE``; ``data`` the ``--data`` override (an ``epochs`` budget
    counts its pairs). ``source`` is None for an unchanged built-in, else
    what to record beside the run's config (file, its sha256, the overrides)."""
    source: dict = {}
    if arg in SCALES and not sets:
        return SCALES[arg], None
    if arg in SCALES:
        raw, where = {"extends": arg}, f"--scale {arg}"
    else:
        path = Path(arg) if is_scale_file(arg) else SCALES_DIR / f"{arg}.yaml"
        if not is_scale_file(arg) and not path.exists():
            found = sorted(p.stem for p in SCALES_DIR.glob("*.yaml"))
            raise UserError(f"unknown scale {arg!r}: choose one of {', '.join(list(SCALES) + found)}, or pass a "
                            "scale file (--scale FILE.yaml, see scales/README.md)")
        raw, where = _read(path), f"scale file {path}"
        source = {"file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        raw.setdefault("name", path.stem)
        _paths_relative_to(raw, path.parent)
    if sets:
        raw = _apply_sets(raw, sets)
        source["set"] = [f"{k}={v!r}" if isinstance(i, tuple) else i for i in sets for k, v in [_kv(i)]]
        where += " (with --set scale.*)"
    scale = build(raw, where, from_file=arg not in SCALES, data=data)
    return scale, (source or None)


def _read(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"scale file {path} does not exist{' (it is a folder)' if path.is_dir() else ''}; pass a "
                        "YAML file, e.g. --scale scales/example-vit-tiny.yaml")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"scale file {path} is not UTF-8 text; pass a YAML file") from None
    except yaml.YAMLError as e:
        raise UserError(f"scale file {path} is not valid YAML ({str(e).splitlines()[0]} "
                        f"{getattr(e, 'problem_mark', '') or ''}); fix the syntax") from None
    if not isinstance(raw, dict):
        raise UserError(f"scale file {path} must be a mapping of fields (name:, extends:, model:, ...), "
                        f"found {type(raw).__name__}")
    return raw


def _paths_relative_to(raw: dict, folder: Path) -> None:
    """data.path and data.dataset_root written relative in a scale file are relative to the file's folder."""
    data = raw.get("data")
    if not isinstance(data, dict):
        return
    for key in ("path", "dataset_root"):
        v = data.get(key)
        if isinstance(v, str) and v and not v.startswith(("/", "~")):
            data[key] = "::".join(str((folder / part).resolve()) for part in v.split("::"))


def _kv(item):
    return item if isinstance(item, tuple) else tuple(item.partition("=")[::2])


def _apply_sets(raw: dict, sets) -> dict:
    raw = copy.deepcopy(raw)
    for item in sets:
        if isinstance(item, tuple):          # a literal value (the --csv-* flags): not parsed as YAML
            key, value = item
        else:
            key, sep, text = item.partition("=")
            if not sep or not key:
                raise UserError(f"--set scale.{item!r} must look like scale.KEY=VALUE, e.g. --set scale.batch_size=64")
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError:
                raise UserError(f"--set scale.{item}: {text!r} is not a valid value") from None
        parts = key.split(".")
        node = raw
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise UserError(f"--set scale.{key}: {p!r} is not a mapping; set scale.{p}=VALUE instead")
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return raw


# ---- building and checking ----------------------------------------------------------------------------------
def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _suggest(key: str, known) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _known(cls) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def build(raw: dict, where: str, from_file: bool = True, data: str | None = None) -> Scale:
    raw = dict(raw)
    extends = raw.pop("extends", None)
    known = set(_known(Scale)) | set(BUDGET_FIELDS)
    for key in raw:
        if key not in known:
            raise UserError(f"{where}: unknown field {key!r}{_suggest(key, known)}; known fields: "
                            f"{', '.join(sorted(known | {'extends'}))}")
    if extends is not None:
        if extends not in SCALES:
            raise UserError(f"{where}: extends: {extends!r} is not a built-in scale; use one of {', '.join(SCALES)}")
        base = SCALES[extends].to_dict()
        base.pop("extends", None)
        raw["extends"] = extends
    else:
        base = {}
        for required in ("model", "batch_size", "optim", "data"):
            if required not in raw:
                raise UserError(f"{where}: missing field {required!r}; set it, or start from a built-in with "
                                f"extends: {' | '.join(SCALES)}")
        if "samples" not in raw and "epochs" not in raw:
            raise UserError(f"{where}: missing budget; set samples: N (samples a CLIP run sees) or epochs: E")
    name = raw.get("name", base.get("name"))
    if not isinstance(name, str) or not name or not all(c.isalnum() or c in "._-" for c in name) \
            or name[0] in ".-":
        raise UserError(f"{where}: name: {name!r} must be a folder name (letters, digits, '.', '_', '-')")
    if name in SCALES and from_file:
        raise UserError(f"{where}: name: {name!r} is a built-in scale's name; give the file its own name: "
                        "(its results go to <results>/<name>/)")
    if "samples" in raw and "epochs" in raw:
        raise UserError(f"{where}: give the budget as samples or as epochs, not both")
    epochs, dataset_size = raw.pop("epochs", None), raw.pop("dataset_size", None)
    if "model" in raw:
        raw["model"] = _model(raw["model"], base.get("model"), where)
    merged = _merge(base, {k: v for k, v in raw.items() if k != "model"})
    if "model" in raw:
        merged["model"] = raw["model"]               # already merged onto the base where the file asked for it
    scale = _construct(merged, where)
    if epochs is not None:
        scale = dataclasses.replace(scale, samples=_epochs_budget(scale, epochs, dataset_size, where, data))
    elif dataset_size is not None:
        raise UserError(f"{where}: dataset_size is only used with epochs; remove it or set epochs: E")
    _check(scale, where)
    return scale


def _construct(d: dict, where: str) -> Scale:
    values = {}
    for key, typ in _known(Scale).items():
        if key not in d:
            continue
        if key in ("optim", "data", "resources"):
            cls = {"optim": Optim, "data": Data, "resources": Resources}[key]
            sub = d[key]
            if isinstance(sub, cls):
                sub = dataclasses.asdict(sub)
            if not isinstance(sub, dict):
                raise UserError(f"{where}: {key} must be a mapping of {', '.join(_known(cls))}")
            hints = _known(cls)
            for k in sub:
                if k not in hints:
                    raise UserError(f"{where}: unknown field {key}.{k}{_suggest(k, hints)}; known: "
                                    f"{', '.join(f'{key}.{h}' for h in hints)}")
            try:
                values[key] = cls(**{k: _coerce(v, hints[k], f"{key}.{k}", where) for k, v in sub.items()})
            except TypeError as e:           # a required field missing (Optim.lr, Data.kind)
                missing = str(e).split("argument", 1)[-1].strip(": ")
                raise UserError(f"{where}: {key} is missing {missing}; add it under {key}:") from None
        else:
            values[key] = _coerce(d[key], typ, key, where)
    return Scale(**values)


def _coerce(v, typ, field: str, where: str):
    def bad(expected: str):
        return UserError(f"{where}: {field} must be {expected}, got {v!r}; fix {field}")
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):            # X | None
        if v is None and type(None) in typing.get_args(typ):
            return None
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        return _coerce(v, inner[0], field, where)
    if typ is bool:
        if not isinstance(v, bool):
            raise bad("true or false")
        return v
    if typ in (int, float):
        if isinstance(v, str):           # YAML 1.1 reads 1e6 as a string
            try:
                v = float(v)
            except ValueError:
                raise bad("a number") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise bad("a number")
        if typ is int:
            if float(v) != int(v):
                raise bad("a whole number")
            return int(v)
        return float(v)
    if typ is str:
        if not isinstance(v, str):
            raise bad("a string")
        return v
    if typ is dict:
        if not isinstance(v, dict):
            raise bad("a mapping")
        return v
    if origin is tuple:
        args = typing.get_args(typ)
        if not isinstance(v, (list, tuple)):
            raise bad("a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(x, args[0], f"{field}[{i}]", where) for i, x in enumerate(v))
        if len(v) != len(args):
            raise bad(f"a list of {len(args)} values")
        return tuple(_coerce(x, a, f"{field}[{i}]", where) for i, (x, a) in enumerate(zip(v, args)))
    raise bad(str(typ))


def _model(value, base_model: dict | None, where: str) -> dict:
    """open_clip.CLIP kwargs from a config name, ``{config: NAME, ...overrides}`` or a mapping."""
    import open_clip

    def named(name) -> dict:
        if not isinstance(name, str) or name not in open_clip.list_models():
            close = difflib.get_close_matches(str(name), open_clip.list_models(), n=3)
            raise UserError(f"{where}: model: {name!r} is not an open_clip model config"
                            f"{' (did you mean ' + ', '.join(close) + '?)' if close else ''}; see "
                            "open_clip.list_models(), or give the model as a mapping (embed_dim, vision_cfg, text_cfg)")
        return copy.deepcopy(open_clip.get_model_config(name))
    if isinstance(value, str):
        cfg = named(value)
    elif isinstance(value, dict):
        value = dict(value)
        cfg = _merge(named(value.pop("config")), value) if "config" in value else _merge(base_model or {}, value)
    else:
        raise UserError(f"{where}: model must be an open_clip config name (e.g. ViT-B-16) or a mapping, got {value!r}")
    for key in ("custom_text", "multimodal_cfg"):
        if cfg.get(key):
            raise UserError(f"{where}: model: {key} models (CoCa, SigLIP, HF text towers) are not open_clip.CLIP; "
                            "pick a CLIP config with a ViT image tower (e.g. ViT-B-16, ViT-S-16)")
    unknown = set(cfg) - set(CLIP_KWARGS)
    if unknown:
        raise UserError(f"{where}: model has unknown key(s) {sorted(unknown)}; open_clip.CLIP takes "
                        f"{', '.join(CLIP_KWARGS)}")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in cfg:
            raise UserError(f"{where}: model is missing {key}; give it, or start from a config: model: {{config: "
                            "ViT-B-16, ...}}")
    vis, txt = cfg["vision_cfg"], cfg["text_cfg"]
    if not isinstance(vis, dict) or not isinstance(txt, dict):
        raise UserError(f"{where}: model.vision_cfg and model.text_cfg must be mappings")
    if vis.get("timm_model_name") or not isinstance(vis.get("patch_size"), int) or isinstance(vis.get("layers"), list):
        raise UserError(f"{where}: model.vision_cfg must describe an open_clip ViT (integer patch_size, no timm or "
                        "ResNet tower): the masking methods drop ViT patch tokens")
    for k, d in (("image_size", vis), ("patch_size", vis), ("width", vis), ("layers", vis)):
        if not isinstance(d.get(k), int) or isinstance(d.get(k), bool) or d[k] < 1:
            raise UserError(f"{where}: model.vision_cfg.{k} must be a positive integer, got {d.get(k)!r}")
    if vis["image_size"] % vis["patch_size"]:
        raise UserError(f"{where}: model.vision_cfg.image_size {vis['image_size']} is not a multiple of patch_size "
                        f"{vis['patch_size']}; change one of them")
    if txt.get("hf_model_name") or txt.get("hf_tokenizer_name"):
        raise UserError(f"{where}: model.text_cfg names a Hugging Face tower/tokenizer; use open_clip's own text "
                        "transformer (CLIP BPE tokenizer)")
    for k in ("context_length", "width", "layers", "heads"):
        if k in txt and (not isinstance(txt[k], int) or isinstance(txt[k], bool) or txt[k] < 1):
            raise UserError(f"{where}: model.text_cfg.{k} must be a positive integer, got {txt[k]!r}")
    if not isinstance(txt.get("context_length"), int):
        raise UserError(f"{where}: model.text_cfg.context_length must be a positive integer")
    import torch
    try:
        with torch.device("meta"):                       # checks every argument without allocating weights
            open_clip.CLIP(**cfg)
    except Exception as e:  # noqa: BLE001 - any constructor error is a bad model field
        raise UserError(f"{where}: open_clip.CLIP rejects this model ({type(e).__name__}: {e}); fix model") from None
    return cfg


def _epochs_budget(scale: Scale, epochs, dataset_size, where: str, data: str | None = None) -> int:
    epochs = _coerce(epochs, float, "epochs", where)
    if epochs <= 0:
        raise UserError(f"{where}: epochs must be positive, got {epochs}")
    if dataset_size is None:
        path = data or scale.data.path
        if path and (data or scale.data.kind != "embedded"):
            from benchmark.data.readers import check_data_path
            check_data_path(path)                        # a folder or a .txt: say so, not "needs dataset_size"
        if scale.data.kind == "embedded" and not data:
            dataset_size = scale.data.train_size
        elif path.endswith((".csv", ".tsv")):
            from benchmark.data.readers import csv_columns
            dataset_size = csv_columns(path, scale.data).rows
        else:
            raise UserError(f"{where}: epochs needs dataset_size (the number of training pairs) for "
                            f"{scale.data.kind} data; add dataset_size: N")
    dataset_size = _coerce(dataset_size, int, "dataset_size", where)
    if dataset_size < 1:
        raise UserError(f"{where}: dataset_size must be at least 1, got {dataset_size}")
    return int(round(epochs * dataset_size))


def _task_datasets(task: str) -> tuple[str, ...]:
    import importlib
    return tuple(getattr(importlib.import_module(f"benchmark.evaluation.{task}"), "DATASETS", ()))


def _check(s: Scale, where: str) -> None:
    def need(ok: bool, field: str, rule: str, value):
        if not ok:
            raise UserError(f"{where}: {field} must be {rule}, got {value!r}; fix {field}")
    need(s.batch_size >= 1, "batch_size", "at least 1", s.batch_size)
    need(s.samples >= s.batch_size, "samples", f"at least one batch ({s.batch_size})", s.samples)
    need(s.checkpoint_every >= 1, "checkpoint_every", "at least 1 step", s.checkpoint_every)
    need(s.eval_every_samples >= 0, "eval_every_samples", "0 (off) or more", s.eval_every_samples)
    o = s.optim
    need(o.lr > 0, "optim.lr", "positive", o.lr)
    need(o.weight_decay >= 0, "optim.weight_decay", "0 or more", o.weight_decay)
    need(all(0 <= b < 1 for b in o.betas), "optim.betas", "two values in [0, 1)", o.betas)
    need(o.eps > 0, "optim.eps", "positive", o.eps)
    need(o.warmup_samples >= 0, "optim.warmup_samples", "0 or more", o.warmup_samples)
    need(o.grad_clip is None or o.grad_clip > 0, "optim.grad_clip", "positive, or null (no clipping)", o.grad_clip)
    need(0 <= o.warmup_start_lr <= o.lr, "optim.warmup_start_lr", "in [0, lr] (0: open_clip's warm-up)",
         o.warmup_start_lr)
    need(0 <= o.min_lr <= o.lr, "optim.min_lr", "in [0, lr] (the end of the cosine)", o.min_lr)
    need(s.zeroshot_templates in ("openai", "flip7", "slip"), "zeroshot_templates", "openai | flip7 | slip",
         s.zeroshot_templates)
    d = s.data
    need(d.kind in DATA_KINDS, "data.kind", " | ".join(DATA_KINDS), d.kind)
    if d.kind == "embedded":
        need(d.train_size >= 1, "data.train_size", "at least 1 for embedded data", d.train_size)
        need(d.eval_size >= 1, "data.eval_size", "at least 1 for embedded data", d.eval_size)
    else:
        need(bool(d.path), "data.path", f"the {d.kind} training data (shards or a CSV) for kind {d.kind}", d.path)
    need(0 < d.crop_scale[0] <= d.crop_scale[1] <= 1, "data.crop_scale", "[min, max] with 0 < min <= max <= 1",
         list(d.crop_scale))
    need(not d.stream or d.kind == "webdataset", "data.stream", "false unless data.kind is webdataset", d.stream)
    need(d.workers >= 0, "data.workers", "0 or more", d.workers)
    need(len(d.csv_separator) <= 1, "data.csv_separator", 'one character (e.g. "\\t" or ",")', d.csv_separator)
    r = s.resources
    need(r.gpus_per_node >= 0, "resources.gpus_per_node", "0 or more", r.gpus_per_node)
    for k in ("nodes", "cpus_per_task", "mem_gb", "time_min"):
        need(getattr(r, k) >= 1, f"resources.{k}", "at least 1", getattr(r, k))
    for t in s.eval_suite:
        need(t in EMBEDDED_SUITE, "eval_suite", f"a list of task families from {', '.join(EMBEDDED_SUITE)}", t)
    for t, names in s.eval_datasets.items():
        need(t in s.eval_suite, f"eval_datasets.{t}", f"a family of eval_suite ({', '.join(s.eval_suite)})", t)
        need(isinstance(names, list) and len(names) > 0, f"eval_datasets.{t}", "a non-empty list of dataset names",
             names)
        allowed = _task_datasets(t) + ("embedded",)
        for n in names:
            need(n in allowed, f"eval_datasets.{t}", f"names from {', '.join(allowed)}", n)
