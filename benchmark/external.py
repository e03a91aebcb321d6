"""``benchmark eval --checkpoint FILE --model NAME [--name LABEL]``: a checkpoint maskbench did not train (an
open_clip state dict, an open_clip training checkpoint, an open_clip pretrained file on disk) evaluated on a
scale's suite and written beside the runs::

    results/<scale>/<label>/seed0/   config.json (checkpoint, sha256, model config)  metrics.json  evals/<task>.json

Its rows in ``results.csv`` carry ``external = True``; the report lists it as its own row marked "external".
Nothing is downloaded: the model is built from an open_clip config (a name in open_clip's ``model_configs/`` or a
JSON file in that format, registered with ``open_clip.add_model_config``) and the weights are read with
``open_clip.load_checkpoint`` (``weights_only``: a pickle that runs code is refused).
"""
from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from pathlib import Path

import open_clip
import torch

from benchmark import discovery
from benchmark.checkpoint import file_sha256
from benchmark.errors import UserError
from benchmark.evaluation import suite
from benchmark.evaluation.features import Encoder
from benchmark.results import code_version, read_json, rebuild_csv, write_json
from benchmark.run_folder import RunFolder
from benchmark.runs import config_hash, device_for_run, run_lock, write_evals

SEED = 0                       # the folder an external checkpoint is written to (one "seed": no training)


def model_config(model: str) -> tuple[str, dict]:
    """(name, config) of ``--model``: an open_clip config name, or a JSON model config file."""
    if model.endswith(".json"):
        path = Path(model)
        if not path.is_file():
            raise UserError(f"--model {model} does not exist; pass an open_clip config name (e.g. ViT-B-16) or a "
                            "JSON file in open_clip's model-config format (embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(path)
        model = path.stem
    if model not in open_clip.list_models():
        raise UserError(f"--model {model!r} is not an open_clip model config; pass one of open_clip.list_models() "
                        "(e.g. ViT-B-16) or a JSON model-config file")
    cfg = open_clip.get_model_config(model)
    txt = cfg.get("text_cfg", {})
    if txt.get("hf_tokenizer_name") or txt.get("hf_model_name"):
        raise UserError(f"--model {model}: its text tower uses a Hugging Face tokenizer, which this suite does not "
                        "load offline; pass a model with open_clip's own text transformer")
    if not isinstance(cfg.get("vision_cfg", {}).get("image_size"), int):
        raise UserError(f"--model {model}: vision_cfg.image_size must be one integer (square inputs)")
    return model, cfg


def load_model(checkpoint: Path, name: str, device) -> torch.nn.Module:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)          # open_clip warns "initialized randomly": the weights are loaded next
    try:
        model = open_clip.create_model(name, pretrained=None, device="cpu")
    finally:
        root.setLevel(level)
    try:
        open_clip.load_checkpoint(model, str(checkpoint), strict=True, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"--checkpoint {checkpoint} is not a plain state dict ({str(e).splitlines()[0]}); refused "
                        "unread: pass a state dict saved with torch.save(model.state_dict(), ...)") from None
    except RuntimeError as e:
        first = " ".join(str(e).split())[:400]
        raise UserError(f"--checkpoint {checkpoint} does not fit --model {name}: {first}; pass the open_clip "
                        "config the checkpoint was trained with") from None
    except (OSError, EOFError, ValueError, KeyError) as e:
        raise UserError(f"--checkpoint {checkpoint} cannot be read ({type(e).__name__}: {e}); pass an open_clip "
                        "state dict or training checkpoint") from None
    return model.to(device).eval()


def default_label(model: str, checkpoint: str) -> str:
    raw = f"{Path(model).stem}-{Path(checkpoint).name.split('.')[0]}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in raw)


def evaluate_checkpoint(checkpoint: str, model: str, label: str | None, scale, scale_source: dict | None,
                        results: str, dataset_root: str | None) -> dict:
    ckpt = Path(checkpoint)
    if not ckpt.is_file():
        raise UserError(f"--checkpoint {checkpoint} does not exist; pass an open_clip state dict file")
    name, cfg = model_config(model)
    label = label or default_label(model, checkpoint)
    if not label or not all(c.isalnum() or c in "._-" for c in label) or label[0] in ".-":
        raise UserError(f"--name {label!r} must be a folder name (letters, digits, '.', '_', '-')")
    if label in discovery.discover():
        raise UserError(f"--name {label!r} is a method's name; give the external checkpoint its own --name")
    run = RunFolder.of(results, scale.name, label, SEED)
    folder = run.path
    ident = {"external": True, "checkpoint": str(ckpt.resolve()), "checkpoint_sha256": file_sha256(ckpt),
             "model": name, "model_config": cfg, "scale": scale.to_dict(), "dataset_root": dataset_root}
    old = read_json(run.config) if run.config.exists() else None
    if old is not None and (not old.get("identity", {}).get("external") or old.get("config_hash") != config_hash(ident)):
        what = "a run maskbench trained" if not old.get("identity", {}).get("external") else "another checkpoint"
        raise UserError(f"{folder} holds {what}; give this checkpoint another --name or --results folder")
    device = device_for_run()
    net = load_model(ckpt, name, device)                  # before anything is written: a bad file writes nothing
    eval_scale = dataclasses.replace(scale, model=cfg)    # the suite reads images at the model's own size
    pre = getattr(net.visual, "preprocess_cfg", {}) or {}
    encoder = Encoder(net, eval_scale.context_length, device, mean=pre.get("mean"), std=pre.get("std"))
    with run_lock(folder):
        write_json(run.config, {"config_hash": config_hash(ident), "identity": ident,
                                "code_version": code_version(), "torch": torch.__version__,
                                "open_clip": open_clip.__version__,
                                **({"scale_source": scale_source} if scale_source else {})})
        t0 = time.perf_counter()
        res = suite.evaluate(net, eval_scale, scale.eval_suite, device, dataset_root, encoder=encoder)
        run_meta = {"method": label, "seed": SEED, "scale": scale.name, "config_hash": config_hash(ident),
                    "code_version": code_version(), "run_dir": str(folder), "external": True,
                    "checkpoint": str(ckpt.resolve()), "open_clip_model": name}
        summary = write_evals(folder, res, run_meta, {}, name, str(ckpt.resolve()))
        summary["eval_time_s"] = round(time.perf_counter() - t0, 3)
        metrics = {"method": label, "seed": SEED, "scale": scale.name, "config_hash": config_hash(ident),
                   "external": True, "checkpoint": str(ckpt.resolve()), "open_clip_model": name,
                   "compute": {}, "history": [], "stats": {}, "evals": summary}
        write_json(run.metrics, metrics)
    rebuild_csv(Path(results), scale.name)
    return metrics
