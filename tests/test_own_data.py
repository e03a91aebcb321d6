"""A researcher's own data, on small real-format files written here: open_clip CSVs of non-square JPEGs, bad
training files (exit 2 before training, each named), open_clip's transforms for non-square images, real
evaluation datasets honoured at every scale (a root holding only some of them, a missing image, ImageNet
train/val with different class folders) and external open_clip checkpoints beside the runs."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
from PIL import Image

from benchmark.data.readers import csv_columns, read_pairs_from_csv
from benchmark.data.train_data import load_training_data
from benchmark.errors import UserError
from benchmark.evaluation import suite
from benchmark.scales import SCALES, Data
from conftest import run_cli
from test_eval_readers import write_dataset_root

SMOKE = SCALES["smoke"]
TINY_MODEL = {"embed_dim": 32,
              "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 32},
              "text_cfg": {"context_length": 16, "width": 32, "heads": 1, "layers": 1}}


def _jpeg(path: Path, w: int, h: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = rng.integers(0, 256, 3)           # two coloured halves: where a crop lands shows
    arr[:, w // 2:] = rng.integers(0, 256, 3)
    Image.fromarray(arr).save(path, quality=95)


def open_clip_csv(folder: Path, n: int = 24) -> Path:
    """A tab-separated CSV with open_clip's default columns (filepath, title) naming non-square JPEGs."""
    rows = []
    for i in range(n):
        w, h = (64 + 8 * (i % 3), 40) if i % 2 else (36, 60 + 4 * (i % 4))      # landscape and portrait
        _jpeg(folder / "images" / f"img{i:03d}.jpg", w, h, i)
        rows.append({"filepath": f"images/img{i:03d}.jpg", "title": f"a photo number {i}, with a comma"})
    path = folder / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def _scale(**data):
    return dataclasses.replace(SMOKE, data=dataclasses.replace(SMOKE.data, kind="csv", **data))


# ---- training CSVs -------------------------------------------------------------------------------------------
def test_open_clip_csv_and_the_comma_format_both_load(tmp_path):
    path = open_clip_csv(tmp_path)
    assert csv_columns(str(path), Data(kind="csv")) == csv_columns(str(path), Data(kind="csv")) \
        and csv_columns(str(path), Data(kind="csv")).separator == "\t"
    images, captions = read_pairs_from_csv(str(path), 32, Data(kind="csv"))
    assert images.shape == (24, 32, 32, 3) and captions[1] == "a photo number 1, with a comma"
    legacy = tmp_path / "legacy.csv"
    pd.DataFrame({"path": [f"images/img{i:03d}.jpg" for i in range(4)],
                  "caption": ["one", "two", "three, four", "five"]}).to_csv(legacy, index=False)
    images2, captions2 = read_pairs_from_csv(str(legacy), 32, Data(kind="csv"))
    assert captions2 == ["one", "two", "three, four", "five"] and np.array_equal(images2, images[:4])
    custom = tmp_path / "custom.csv"
    pd.DataFrame({"img": ["images/img000.jpg"], "text": ["hello"]}).to_csv(custom, sep=";", index=False)
    with pytest.raises(UserError, match="no column"):
        read_pairs_from_csv(str(custom), 32, Data(kind="csv"))
    _, caps = read_pairs_from_csv(str(custom), 32, Data(kind="csv", csv_separator=";", csv_img_key="img",
                                                       csv_caption_key="text"))
    assert caps == ["hello"]


def test_open_clip_flags_on_the_command_line_reach_the_scale(tmp_path):
    from benchmark import cli
    path = tmp_path / "semi.csv"
    open_clip_csv(tmp_path, 4)
    pd.DataFrame({"img": [f"images/img{i:03d}.jpg" for i in range(4)], "text": list("abcd")}).to_csv(
        path, sep=";", index=False)
    args = cli.build_parser().parse_args(["run", "--methods", "clip", "--scale", "smoke", "--data", str(path),
                                          "--csv-separator", ";", "--csv-img-key", "img", "--csv-caption-key",
                                          "text", "--results", str(tmp_path / "r")])
    scale, specs = cli._specs(args, args.scale)
    assert (scale.data.csv_separator, scale.data.csv_img_key, scale.data.csv_caption_key) == (";", "img", "text")
    assert specs[0].scale_source["set"][0] == "data.csv_separator=';'"
    assert len(load_training_data(scale, str(path))) == 4
    args = cli.build_parser().parse_args(["run", "--scale", "smoke", "--csv-separator", "\\t"])
    assert cli._specs(args, args.scale)[0].data.csv_separator == "\t"          # typed as backslash-t


def test_every_bad_training_file_exits_2_before_training_and_is_named(tmp_path, capsys):
    from benchmark.cli import main
    good = open_clip_csv(tmp_path, 8)
    bad = {}
    df = pd.read_csv(good, sep="\t")
    missing = df.copy()
    missing.loc[2, "filepath"] = "images/nope.jpg"
    missing.loc[5, "filepath"] = "gone/also_nope.jpg"
    bad["missing"] = (missing, ["2 of 8 images cannot be used", "2 missing", "nope.jpg", "also_nope.jpg"])
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    (tmp_path / "images" / "cut.jpg").write_bytes((tmp_path / "images" / "img000.jpg").read_bytes()[:40])
    nonimage = df.copy()
    nonimage.loc[1, "filepath"] = "images/notes.txt"
    nonimage.loc[3, "filepath"] = "images/cut.jpg"
    bad["nonimage"] = (nonimage, ["2 not readable images", "notes.txt (UnidentifiedImageError)", "cut.jpg"])
    bad["header_only"] = (df.iloc[:0], ["has a header but no rows"])
    bad["columns"] = (df.rename(columns={"title": "caption_text"}), ["no column(s) 'title'", "--csv-caption-key"])
    cases = []
    for name, (frame, needles) in bad.items():
        p = tmp_path / f"{name}.csv"
        frame.to_csv(p, sep="\t", index=False)
        cases.append((str(p), needles + [str(p)]))
    (tmp_path / "empty.csv").write_text("")
    cases.append((str(tmp_path / "empty.csv"), ["is empty"]))
    (tmp_path / "list.txt").write_text("a.jpg\n")
    cases.append((str(tmp_path / "list.txt"), ["list.txt is neither a CSV", ".tar"]))
    cases.append((str(tmp_path / "images"), ["is a folder", "brace pattern"]))
    cases.append((str(tmp_path / "nothere.csv"), ["nothere.csv does not exist"]))
    res = tmp_path / "results"
    for data, needles in cases:
        code = main(["run", "--methods", "clip", "--scale", "smoke", "--data", data, "--results", str(res),
                     "--cluster", "debug", "--no-report"])
        err = capsys.readouterr().err
        assert code == 2, (data, err)
        assert all(n in err for n in needles), (data, needles, err)
        assert "Traceback" not in err
    assert not res.exists(), "nothing may be written before training on bad input"


# ---- open_clip's transforms for non-square images ----------------------------------------------------------
def test_non_square_images_follow_open_clips_transforms(tmp_path):
    path = open_clip_csv(tmp_path, 6)
    # without augmentation: open_clip's evaluation transform (shorter side, centre crop), never a squash
    images, _ = read_pairs_from_csv(str(path), 32, Data(kind="csv"))
    t = open_clip.image_transform(32, is_train=False)
    with Image.open(tmp_path / "images" / "img001.jpg") as im:
        ref = np.asarray(t.transforms[1](t.transforms[0](im.convert("RGB"))))
        squashed = np.asarray(im.convert("RGB").resize((32, 32), Image.Resampling.BICUBIC))
    assert np.array_equal(images[1], ref) and not np.array_equal(images[1], squashed)
    # with augmentation: the whole image is kept and open_clip's RandomResizedCrop at the scale's crop_scale is
    # cut from it at each step, seeded by (seed, step, rank)
    scale = _scale(path=str(path), augment=True, crop_scale=(0.3, 0.4))
    data = load_training_data(scale)
    assert [tuple(im.shape) for im in data.images[:2]] == [(3, 60, 36), (3, 40, 72)]     # aspect kept
    assert data.crop.scale == (0.3, 0.4) and type(data.crop).__name__ == "RandomResizedCrop"
    a, b = data.batch(0, 6, 0, "cpu"), data.batch(0, 6, 0, "cpu")
    assert a["images"].shape == (6, 3, 32, 32) and torch.equal(a["images"], b["images"])
    assert not torch.equal(a["images"], data.batch(1, 6, 0, "cpu")["images"])
    state = torch.get_rng_state()
    data.batch(2, 6, 0, "cpu")
    assert torch.equal(state, torch.get_rng_state()), "the crops must not move the global RNG (masks)"
    full = load_training_data(_scale(path=str(path), augment=True, crop_scale=(1.0, 1.0)))
    narrow = load_training_data(_scale(path=str(path), augment=True, crop_scale=(0.1, 0.1)))
    # a small crop of a two-coloured image is mostly one colour: more pixels near one colour than the full view
    spread = lambda x: float(x["images"].std(dim=(2, 3)).mean())             # noqa: E731
    assert spread(narrow.batch(0, 6, 0, "cpu")) < spread(full.batch(0, 6, 0, "cpu"))


# ---- real datasets at every scale --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_root(tmp_path_factory):
    return write_dataset_root(tmp_path_factory.mktemp("all"))


def _subset(full: Path, dest: Path, names) -> Path:
    for n in names:
        shutil.copytree(full / n, dest / n)
    return dest


def test_a_root_with_some_datasets_runs_those_and_names_the_rest(full_root, tmp_path):
    root = _subset(full_root, tmp_path / "root", ["cifar10", "mscoco_captions"])
    plans = {t: suite.family_plan(t, SMOKE, str(root)) for t in SMOKE.eval_suite}
    assert (plans["zeroshot_classification"].real, plans["zeroshot_classification"].missing) == \
        (["cifar10"], ["imagenet1k", "cifar100"])
    assert plans["zeroshot_retrieval"].real == ["mscoco_captions"] and not plans["zeroshot_retrieval"].embedded
    # no real dataset for the family: the embedded set at an embedded-data scale, named as such
    assert plans["compositionality"].embedded and plans["compositionality"].real == []
    assert "flickr30k" in suite.describe(plans["zeroshot_retrieval"])
    # a scale naming its datasets: exactly those, and a named one that is absent is an error before training
    named = dataclasses.replace(SMOKE, eval_suite=("zeroshot_classification", "compositionality"),
                                eval_datasets={"zeroshot_classification": ["cifar10"],
                                               "compositionality": ["sugar_crepe"]})
    with pytest.raises(UserError, match="none of sugar_crepe is under"):
        suite.check_datasets(named, named.eval_suite, str(root))
    # the periodic probe scores the real set too
    torch.manual_seed(0)
    probe = suite.zero_shot_probe(SMOKE, "cpu", str(root))
    assert probe(open_clip.CLIP(**SMOKE.model).eval())["dataset"] == "cifar10"


def test_missing_images_in_a_present_dataset_are_listed_and_exit_2(full_root, tmp_path, capsys):
    from benchmark.cli import main
    root = _subset(full_root, tmp_path / "root", ["mscoco_captions", "imagenet1k"])
    for f in sorted((root / "mscoco_captions" / "val2014").glob("*.jpg"))[:7]:
        f.unlink()
    with pytest.raises(UserError) as e:
        suite.check_datasets(SMOKE, SMOKE.eval_suite, str(root))
    msg = str(e.value)
    assert msg.startswith("7 image file(s)") and "and 2 more" in msg and "(mscoco_captions)" in msg
    assert str(root / "mscoco_captions" / "val2014" / "COCO_val2014_000000000003.jpg") in msg
    res = tmp_path / "r"
    assert main(["run", "--methods", "clip", "--scale", "smoke", "--dataset-root", str(root), "--results", str(res),
                 "--cluster", "debug", "--no-report"]) == 2
    assert "7 image file(s)" in capsys.readouterr().err and not res.exists()


def test_imagenet_labels_follow_the_fixed_wordnet_list_across_splits(tmp_path):
    from benchmark.evaluation import linear_probe, real_datasets as R
    wnids = R.imagenet_wnids()
    picks = {"train": [wnids[5], wnids[17], wnids[400]], "val": [wnids[17], wnids[400], wnids[999]]}
    for split, ws in picks.items():
        for k, w in enumerate(ws):
            for i in range(2):
                _jpeg(tmp_path / "imagenet1k" / split / w / f"{w}_{i}.JPEG", 40 + k, 30, k * 10 + i)
    _, tr, classes = R.read_imagenet(tmp_path, "train", 32)
    _, va, _ = R.read_imagenet(tmp_path, "val", 32)
    assert tr == [5, 5, 17, 17, 400, 400] and va == [17, 17, 400, 400, 999, 999]     # same class, same label
    assert len(classes) == 1000
    [s] = linear_probe.real_sets(str(tmp_path), SMOKE, ["imagenet1k"])
    train = [it["label"] for it in s.items if it["split"] == "train"]
    test = [it["label"] for it in s.items if it["split"] == "test"]
    assert set(train) & set(test) == {17, 400}
    from benchmark.evaluation import zeroshot_classification as zs
    [z] = zs.real_sets(str(tmp_path), SMOKE, ["imagenet1k"])
    names = R._cb_json("en_classnames.json")["imagenet1k"]
    assert z.meta["classnames"] == [names[17], names[400], names[999]] and z.meta["chance"] == 1 / 3


# ---- external checkpoints ----------------------------------------------------------------------------------
def _tiny_config(tmp_path) -> Path:
    path = tmp_path / "TinyViT-test.json"
    path.write_text(json.dumps(TINY_MODEL))
    return path


def test_external_checkpoint_is_evaluated_written_and_reported(full_root, tmp_path, capsys):
    from benchmark.cli import main
    cfg = _tiny_config(tmp_path)
    torch.manual_seed(3)
    model = open_clip.CLIP(**TINY_MODEL)
    plain = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), plain)
    # open_clip's training checkpoint format ({"state_dict": {"module." + key: ...}}) loads as well
    wrapped = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    root = _subset(full_root, tmp_path / "root", ["cifar10", "mscoco_captions"])
    scale = tmp_path / "ext.yaml"
    scale.write_text("extends: smoke\nname: ext\neval_suite: [zeroshot_classification, zeroshot_retrieval]\n"
                     "eval_datasets: {zeroshot_classification: [cifar10], zeroshot_retrieval: [mscoco_captions]}\n")
    res, reports = tmp_path / "results", tmp_path / "reports"
    for ckpt, label in ((plain, "tiny-a"), (wrapped, "tiny-b")):
        assert main(["eval", "--checkpoint", str(ckpt), "--model", str(cfg), "--name", label, "--scale", str(scale),
                     "--dataset-root", str(root), "--results", str(res)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    table = pd.read_csv(res / "ext" / "results.csv")
    main_rows = table[table["main"]]
    assert set(main_rows["method"]) == {"tiny-a", "tiny-b"} and main_rows["external"].all()
    assert set(main_rows["dataset"]) == {"cifar10", "mscoco_captions"}
    a = main_rows[main_rows["method"] == "tiny-a"].set_index("dataset")["value"]
    b = main_rows[main_rows["method"] == "tiny-b"].set_index("dataset")["value"]
    assert a.equals(b), "the same weights in either file format give the same numbers"
    cfg_json = json.loads((res / "ext" / "tiny-a" / "seed0" / "config.json").read_text())
    assert cfg_json["identity"]["external"] and len(cfg_json["identity"]["checkpoint_sha256"]) == 64
    ev = json.loads((res / "ext" / "tiny-a" / "seed0" / "evals" / "zeroshot_classification.json").read_text())
    assert ev["run"]["external"] and ev["pretrained"] == str(plain.resolve())
    assert main(["report", "--scale", str(scale), "--results", str(res), "--reports", str(reports)]) == 0
    summary = (reports / "ext" / "summary.md").read_text()
    assert "| tiny-a (external)" in summary and "| tiny-b (external)" in summary
    assert "a checkpoint maskbench did not train" in summary
    # bad inputs: exit 2, named, nothing written
    other = open_clip.CLIP(**{**TINY_MODEL, "embed_dim": 16})
    torch.save(other.state_dict(), tmp_path / "other.pt")
    (tmp_path / "evil.pt").write_bytes(b"cos\nsystem\n(S'echo hi'\ntR.")
    cases = [(["--checkpoint", str(tmp_path / "other.pt"), "--model", str(cfg)], "does not fit --model"),
             (["--checkpoint", str(tmp_path / "evil.pt"), "--model", str(cfg)], "not a plain state dict"),
             (["--checkpoint", str(tmp_path / "nope.pt"), "--model", str(cfg)], "does not exist"),
             (["--checkpoint", str(plain), "--model", "ViT-Q-99"], "not an open_clip model config"),
             (["--checkpoint", str(plain)], "--checkpoint FILE and --model NAME go together"),
             (["--checkpoint", str(plain), "--model", str(cfg), "--name", "flip"], "is a method's name"),
             (["--checkpoint", str(wrapped), "--model", str(cfg), "--name", "tiny-a"], "holds another checkpoint")]
    for extra, needle in cases:
        out = tmp_path / "bad-results"
        code = main(["eval", *extra, "--scale", str(scale), "--dataset-root", str(root),
                     "--results", str(out if "tiny-a" not in extra else res)])
        err = capsys.readouterr().err
        assert code == 2 and needle in err, (extra, err)
        assert not out.exists()


# ---- end to end --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_yaml_scale_on_an_open_clip_csv_and_a_partial_root_end_to_end(full_root, tmp_path):
    """The closing check of the issue: a tiny-ViT scale file, trained on an open_clip CSV of non-square JPEGs,
    evaluated on a root holding only a CIFAR-10 and a COCO set: results.csv holds exactly those datasets."""
    csv = open_clip_csv(tmp_path / "data", 48)
    root = _subset(full_root, tmp_path / "root", ["cifar10", "mscoco_captions"])
    text = (Path(__file__).resolve().parent.parent / "scales" / "example-vit-tiny.yaml").read_text()
    scale = tmp_path / "example-vit-tiny.yaml"
    scale.write_text(text.replace("path: my_pairs.csv", f"path: {csv}"))
    res = tmp_path / "results"
    proc = run_cli("run", "--methods", "clip", "--scale", scale, "--dataset-root", root, "--results", res,
                   "--reports", tmp_path / "reports", "--cluster", "debug")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(res / "example-vit-tiny" / "results.csv")
    assert sorted(set(table["dataset"])) == ["cifar10", "mscoco_captions"]
    assert not table["dataset"].str.startswith("embedded").any()
    assert set(table["task"]) == {"zeroshot_classification", "zeroshot_retrieval", "linear_probe"}
    metrics = json.loads((res / "example-vit-tiny" / "clip" / "seed0" / "metrics.json").read_text())
    assert metrics["compute"]["samples_seen"] >= 2 * 48 - 16 and metrics["history"]
    assert {p["dataset"] for p in metrics["history"]} == {"cifar10"}             # the periodic probe is real too
    cfg = json.loads((res / "example-vit-tiny" / "clip" / "seed0" / "config.json").read_text())
    assert cfg["scale_source"]["file"] == str(scale.resolve()) and cfg["identity"]["scale"]["samples"] == 96
