"""Scales from YAML files (--scale FILE.yaml, extends:, open_clip model names), --set scale.KEY=VALUE, and the
check of every field: a bad one exits 2 naming the field and the fix, writing nothing."""
from __future__ import annotations

import json
import textwrap

import pytest

from benchmark.errors import UserError
from benchmark.scale_files import load_scale
from benchmark.scales import SCALES, Scale


def _file(tmp_path, text: str, name: str = "mine.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_builtins_keep_names_and_numbers_and_round_trip():
    assert list(SCALES) == ["smoke", "pocket", "cc3m-b16", "cc12m-b16", "yfcc15m-b16"]
    assert (SCALES["smoke"].batch_size, SCALES["smoke"].samples) == (32, 384)
    assert (SCALES["pocket"].batch_size, SCALES["pocket"].samples, SCALES["pocket"].optim.lr) == (128, 76800, 2e-3)
    assert SCALES["cc12m-b16"].samples == 32 * 10_968_539     # the cluster-masking command (issue 16 item 5)
    for name, s in SCALES.items():
        assert Scale.from_dict(json.loads(json.dumps(s.to_dict()))) == s
        scale, source = load_scale(name)
        assert scale == s and source is None


def test_file_extends_a_builtin_and_overrides_fields(tmp_path):
    p = _file(tmp_path, """
        extends: pocket
        batch_size: 64
        epochs: 2
        optim: {lr: 1e-3}
        data: {augment: true, crop_scale: [0.5, 1.0]}
        eval_suite: [zeroshot_classification, linear_probe]
        eval_datasets: {zeroshot_classification: [cifar10]}
    """)
    s, source = load_scale(str(p))
    pocket = SCALES["pocket"]
    assert s.name == "mine" and s.extends == "pocket" and s.method_config_scale == "pocket"
    assert s.batch_size == 64 and s.samples == 2 * pocket.data.train_size        # epochs x the embedded set
    assert s.optim.lr == 1e-3 and s.optim.weight_decay == pocket.optim.weight_decay   # merged per key
    assert s.data.augment and s.data.crop_scale == (0.5, 1.0) and s.data.train_size == pocket.data.train_size
    assert s.model == pocket.model
    assert s.eval_datasets == {"zeroshot_classification": ["cifar10"]}
    assert source["file"] == str(p.resolve()) and len(source["sha256"]) == 64


def test_model_from_an_open_clip_config_name_or_with_overrides(tmp_path):
    import open_clip
    s, _ = load_scale(str(_file(tmp_path, "extends: cc12m-b16\nname: s16\nmodel: ViT-S-16\n")))
    assert s.model == open_clip.get_model_config("ViT-S-16") and s.image_size == 224 and s.patch_grid == 14
    s, _ = load_scale(str(_file(tmp_path, """
        extends: smoke
        name: s16small
        model: {config: ViT-S-16, vision_cfg: {image_size: 64, layers: 2}, text_cfg: {layers: 2}}
    """)))
    assert s.image_size == 64 and s.model["vision_cfg"]["layers"] == 2 and s.model["vision_cfg"]["width"] == 384
    assert s.model["text_cfg"]["layers"] == 2 and s.context_length == 77


def test_set_overrides_any_field_and_is_recorded():
    s, source = load_scale("smoke", ["batch_size=16", "optim.lr=5e-4", "model.vision_cfg.layers=2",
                                     "data.augment=true"])
    assert (s.batch_size, s.optim.lr, s.model["vision_cfg"]["layers"], s.data.augment) == (16, 5e-4, 2, True)
    assert s.name == "smoke" and source == {"set": ["batch_size=16", "optim.lr=5e-4", "model.vision_cfg.layers=2",
                                                     "data.augment=true"]}


def test_a_standalone_file_needs_its_required_fields(tmp_path):
    with pytest.raises(UserError, match="missing field 'model'.*extends: smoke"):
        load_scale(str(_file(tmp_path, "batch_size: 8\n")))
    full = _file(tmp_path, """
        name: standalone
        model: {embed_dim: 16, vision_cfg: {image_size: 16, patch_size: 8, width: 16, layers: 1, head_width: 16},
                text_cfg: {context_length: 8, width: 16, heads: 1, layers: 1}}
        batch_size: 4
        samples: 8
        optim: {lr: 1.0e-3, weight_decay: 0.0}
        data: {kind: embedded, train_size: 8, eval_size: 8}
        eval_suite: [zeroshot_classification]
    """)
    s, _ = load_scale(str(full))
    assert s.patch_grid == 2 and s.resources == SCALES["smoke"].resources and s.optim.betas == (0.9, 0.98)


BAD = [
    ("batch_size: 0", "batch_size must be at least 1"),
    ("batch_size: many", "batch_size must be a number"),
    ("batchsize: 8", "unknown field 'batchsize' (did you mean 'batch_size'?)"),
    ("samples: 8", "samples must be at least one batch"),
    ("samples: 100\nepochs: 2", "samples or as epochs, not both"),
    ("epochs: -1", "epochs must be positive"),
    ("optim: {lr: -1}", "optim.lr must be positive"),
    ("optim: {lrr: 1}", "unknown field optim.lrr (did you mean 'lr'?)"),
    ("optim: {betas: [0.9]}", "optim.betas must be a list of 2 values"),
    ("data: {kind: parquet}", "data.kind must be embedded | webdataset | csv"),
    ("data: {kind: csv}", "data.path must be the csv training data"),
    ("data: {crop_scale: [0.9, 0.5]}", "data.crop_scale must be [min, max]"),
    ("data: {augment: maybe}", "data.augment must be true or false"),
    ("data: {csv_separator: ';;'}", "data.csv_separator must be one character"),
    ("data: {stream: true}", "data.stream must be false unless data.kind is webdataset"),
    ("model: ViT-B-17", "'ViT-B-17' is not an open_clip model config (did you mean ViT-B-16"),
    ("model: RN50", "must describe an open_clip ViT"),
    ("model: coca_ViT-B-32", "custom_text models"),
    ("model: {vision_cfg: {patch_size: 5}}", "image_size 32 is not a multiple of patch_size 5"),
    ("model: {vision_cfg: {colour: 1}}", "open_clip.CLIP rejects this model"),
    ("model: {depth: 3}", "model has unknown key(s) ['depth']"),
    ("eval_suite: [zeroshot, vqa]", "eval_suite must be a list of task families"),
    ("eval_datasets: {vqa: [vqav2]}\neval_suite: [linear_probe]", "eval_datasets.vqa must be a family of eval_suite"),
    ("eval_datasets: {linear_probe: [imagenet]}", "eval_datasets.linear_probe must be names from cifar10"),
    ("resources: {nodes: 0}", "resources.nodes must be at least 1"),
    ("runs_here: 1", "runs_here must be true or false"),
    ("extends: huge", "extends: 'huge' is not a built-in scale"),
    ("name: pocket", "'pocket' is a built-in scale's name"),
    ("name: ../x", "must be a folder name"),
]


@pytest.mark.parametrize("line,needle", BAD, ids=[b[0].split(":")[0] + str(i) for i, b in enumerate(BAD)])
def test_every_field_is_checked_with_a_message_naming_it(tmp_path, line, needle):
    p = _file(tmp_path, "extends: smoke\n" + ("" if line.startswith(("extends", "name")) else "name: mine\n")
              + line + "\n")
    with pytest.raises(UserError) as e:
        load_scale(str(p))
    assert needle in str(e.value) and str(p) in str(e.value)


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_scale(str(tmp_path / "nope.yaml"))
    with pytest.raises(UserError, match="not valid YAML"):
        load_scale(str(_file(tmp_path, "extends: [smoke\n")))
    with pytest.raises(UserError, match="must be a mapping"):
        load_scale(str(_file(tmp_path, "- smoke\n")))
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UserError, match="not UTF-8"):
        load_scale(str(tmp_path / "bin.yaml"))
    with pytest.raises(UserError, match="unknown scale 'nosuch'"):
        load_scale("nosuch")


def test_cli_records_the_scale_file_and_set_in_config_and_hash(tmp_path, monkeypatch, capsys):
    """A file scale and a --set scale.* change the config hash and are recorded in config.json; a bad field
    exits 2 before anything is written."""
    from benchmark import cli
    from benchmark.runs import config_hash, identity
    res = tmp_path / "r"
    bad = _file(tmp_path, "extends: smoke\nname: mine\noptim: {lr: 0}\n", "bad.yaml")
    assert cli.main(["run", "--methods", "clip", "--scale", str(bad), "--results", str(res)]) == 2
    assert "optim.lr must be positive" in capsys.readouterr().err and not res.exists()
    assert cli.main(["run", "--methods", "clip", "--scale", "smoke", "--set", "scale.batch_size=-4",
                     "--results", str(res)]) == 2
    assert "batch_size must be at least 1" in capsys.readouterr().err and not res.exists()

    args = cli.build_parser().parse_args(["run", "--methods", "clip", "--scale", "smoke", "--results", str(res)])
    plain = cli._specs(args, args.scale)[1][0]
    args = cli.build_parser().parse_args(["run", "--methods", "clip", "--scale", "smoke", "--results", str(res),
                                          "--set", "scale.optim.lr=5e-4"])
    changed = cli._specs(args, args.scale)[1][0]
    assert changed.scale == "smoke" and changed.scale_source == {"set": ["optim.lr=5e-4"]}
    assert identity(changed)["scale"]["optim"]["lr"] == 5e-4 and identity(changed)["scale_set"] == ["optim.lr=5e-4"]
    assert config_hash(identity(changed)) != config_hash(identity(plain))
    assert "scale_set" not in identity(plain)                      # built-in runs keep their identity


def test_an_epochs_budget_counts_the_csv_and_names_a_bad_data_path(tmp_path):
    (tmp_path / "pairs.csv").write_text("filepath\ttitle\na.jpg\tone\nb.jpg\ttwo\nc.jpg\tthree\n")
    p = _file(tmp_path, "extends: smoke\nname: ep\nbatch_size: 2\nepochs: 4\ndata: {kind: csv, path: pairs.csv}\n")
    s, _ = load_scale(str(p))
    assert s.samples == 12 and s.data.path == str(tmp_path / "pairs.csv")      # relative to the scale file
    (tmp_path / "list.txt").write_text("a.jpg\n")
    with pytest.raises(UserError, match="is a folder"):
        load_scale(str(p), data=str(tmp_path))
    with pytest.raises(UserError, match="list.txt is neither a CSV"):
        load_scale(str(p), data=str(tmp_path / "list.txt"))
