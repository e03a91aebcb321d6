"""Scales: everything that must be identical across methods (docs/design.md, "Matched compute").

A scale fixes the model, image size, global batch, optimizer, schedule, compute budget, training data and
evaluation suite. Methods may not change any of it. The compute budget is stated as the samples a plain
CLIP run sees (the papers' protocol); under ``--match flops`` it becomes the FLOPs of that CLIP run.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from benchmark.errors import UserError


@dataclass(frozen=True)
class Optim:
    lr: float
    weight_decay: float
    betas: tuple[float, float] = (0.9, 0.98)   # open_clip ViT defaults (open_clip_train/params.py)
    eps: float = 1e-6
    warmup_samples: int = 0                    # linear warmup, then cosine to min_lr
    warmup_start_lr: float = 0.0               # 0: open_clip's warmup lr*(step+1)/warmup; else SLIP's linspace from it
    min_lr: float = 0.0                        # end of the cosine (open_clip: 0; SLIP: 1e-5)
    # Global-norm gradient clipping; None = off, as in every official recipe (open_clip_train's
    # --grad-clip-norm defaults to None; FLIP's configs and SLIP's main.py do not clip).
    grad_clip: float | None = None


@dataclass(frozen=True)
class Data:
    kind: str                      # "embedded" (generated here), "webdataset" or "csv"
    train_size: int = 0            # embedded: training pairs to generate
    eval_size: int = 0             # embedded: items per evaluation set
    path: str = ""                 # webdataset: brace pattern of shards; csv: a CSV/TSV file (see csv_* below)
    dataset_root: str = ""         # real evaluation datasets (clip_benchmark layouts)
    augment: bool = False          # open_clip's train transform: RandomResizedCrop(crop_scale) of the original image
    crop_scale: tuple[float, float] = (0.9, 1.0)   # RandomResizedCrop's area range (open_clip AugmentationCfg.scale)
    # CSV columns as open_clip's --csv-separator/--csv-img-key/--csv-caption-key (open_clip_train/params.py:
    # tab, filepath, title). Empty: open_clip's defaults, or maskbench's comma "path,caption" header when found.
    csv_separator: str = ""
    csv_img_key: str = ""
    csv_caption_key: str = ""
    stream: bool = False           # read shards as a stream (datasets larger than memory) instead of loading them
    workers: int = 8               # data-loading processes per GPU when streaming


@dataclass(frozen=True)
class Resources:
    gpus_per_node: int = 0
    nodes: int = 1
    cpus_per_task: int = 2
    mem_gb: int = 8
    time_min: int = 60


@dataclass(frozen=True)
class Scale:
    name: str
    model: dict                    # open_clip.CLIP kwargs: embed_dim, vision_cfg, text_cfg
    batch_size: int                # global batch
    samples: int                   # samples seen by the CLIP reference run = the compute budget
    optim: Optim
    data: Data
    eval_suite: tuple[str, ...]
    checkpoint_every: int = 200    # steps
    eval_every_samples: int = 0    # periodic zero-shot evaluation during training (0 = off)
    # Zero-shot templates on the real datasets (evaluation/real_datasets.py ``templates``): openai (clip_benchmark's,
    # ImageNet OpenAI's 80), flip7 (FLIP App. A), slip (SLIP's templates.json; SLIP and Dong's MaskCLIP).
    zeroshot_templates: str = "openai"
    resources: Resources = field(default_factory=Resources)
    runs_here: bool = True         # False: defined for the cluster only
    # per task family, the real datasets to evaluate (names as in evaluation/<task>.py DATASETS, or "embedded");
    # a family not named here evaluates every dataset of its DATASETS found under the dataset root
    eval_datasets: dict = field(default_factory=dict)
    extends: str = ""              # a scale file's built-in base: its per-scale method values apply (config.yaml)

    @property
    def image_size(self) -> int:
        return int(self.model["vision_cfg"]["image_size"])

    @property
    def context_length(self) -> int:
        return int(self.model["text_cfg"]["context_length"])

    @property
    def patch_grid(self) -> int:
        return self.image_size // int(self.model["vision_cfg"]["patch_size"])

    @property
    def method_config_scale(self) -> str:
        """The scale name whose ``scales:`` entry of a method's config.yaml applies."""
        return self.name if self.name in SCALES or not self.extends else self.extends

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Scale":
        """The inverse of ``to_dict`` (a scale travels to job processes as a dict)."""
        def tup(x):
            return tuple(x) if isinstance(x, list) else x
        d = dict(d)
        d["optim"] = Optim(**{k: tup(v) for k, v in d["optim"].items()})
        d["data"] = Data(**{k: tup(v) for k, v in d["data"].items()})
        d["resources"] = Resources(**d["resources"])
        d["eval_suite"] = tuple(d["eval_suite"])
        d["eval_datasets"] = {k: list(v) for k, v in d.get("eval_datasets", {}).items()}
        return cls(**d)


def _tiny_model(image_size: int, patch: int, width: int, layers: int, text_width: int, text_layers: int,
                embed_dim: int, context: int) -> dict:
    return dict(
        embed_dim=embed_dim,
        vision_cfg=dict(image_size=image_size, patch_size=patch, width=width, layers=layers,
                        head_width=32, mlp_ratio=4.0),
        text_cfg=dict(context_length=context, width=text_width, heads=max(1, text_width // 32),
                      layers=text_layers),
    )


# ViT-B/16 as open_clip's "ViT-B-16" config (FLIP Table 9 B/16: embed 512, 12L/768/12H, text 12L/512/8H).
VIT_B16 = dict(
    embed_dim=512,
    vision_cfg=dict(image_size=224, patch_size=16, width=768, layers=12, head_width=64, mlp_ratio=4.0),
    text_cfg=dict(context_length=77, width=512, heads=8, layers=12),
)

# Evaluation suites. Task names are the evaluation modules' names.
EMBEDDED_SUITE = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "compositionality", "vqa")
PAPER_SUITE = ("zeroshot_classification", "zeroshot_retrieval", "linear_probe", "compositionality", "vqa")

# The small-scale recipe shared by CLIP, FLIP and cluster masking (the cluster-masking README's training command; FLIP App. A, Table 10):
# global batch 2048, lr 5e-4, warmup 2000 steps, AdamW (0.9, 0.98, 1e-6), wd 0.2.
_PAPER_OPTIM = Optim(lr=5e-4, weight_decay=0.2, warmup_samples=2000 * 2048)
_GPU8 = Resources(gpus_per_node=8, nodes=1, cpus_per_task=8, mem_gb=64, time_min=24 * 60)

SCALES: dict[str, Scale] = {
    s.name: s
    for s in [
        Scale(
            name="smoke",
            model=_tiny_model(32, 8, 32, 1, 32, 1, 32, 16),
            batch_size=32,
            samples=32 * 12,
            optim=Optim(lr=1e-3, weight_decay=0.1, warmup_samples=32 * 2),
            data=Data(kind="embedded", train_size=512, eval_size=96),
            eval_suite=EMBEDDED_SUITE,
            checkpoint_every=4,
            eval_every_samples=32 * 6,
        ),
        Scale(
            name="pocket",
            # 32 px, patch 8 (a 4x4 grid of 16 tokens), width 64 x 2 layers, text 64 x 2, context 20 (the longest
            # embedded caption, a compositionality negative, is 20 tokens). Patch 4 (64 tokens) cost 2.4x the step
            # time on a 2-core CPU, which put three seeds of every method out of reach (docs/pocket.md).
            model=_tiny_model(32, 8, 64, 2, 64, 2, 64, 20),
            batch_size=128,
            samples=128 * 600,
            optim=Optim(lr=2e-3, weight_decay=0.1, warmup_samples=128 * 60),
            data=Data(kind="embedded", train_size=30_000, eval_size=1000),
            eval_suite=EMBEDDED_SUITE,
            checkpoint_every=100,
            eval_every_samples=128 * 150,
        ),
        # Paper scales: defined in full, run on a cluster only (runs_here=False).
        Scale(
            name="cc3m-b16",
            model=VIT_B16,
            batch_size=2048,
            samples=40 * 2_900_000,          # SLIP's CC3M ViT-B/16 CLIP: 40 epochs (SLIP's README)
            optim=dataclasses.replace(_PAPER_OPTIM, lr=5e-4, weight_decay=0.5),
            data=Data(kind="webdataset", path="/datasets/cc3m/{00000..00331}.tar", dataset_root="/datasets",
                      augment=True, stream=True),
            eval_suite=PAPER_SUITE, checkpoint_every=1000, eval_every_samples=5 * 2_900_000,
            resources=_GPU8, runs_here=False,
        ),
        Scale(
            name="cc12m-b16",
            model=VIT_B16,
            batch_size=2048,
            samples=32 * 10_968_539,         # cluster masking README: --train-num-samples 10968539, 32 epochs
            optim=_PAPER_OPTIM,
            data=Data(kind="webdataset", path="/datasets/cc12m/{00000..01242}.tar", dataset_root="/datasets",
                      augment=True, stream=True),
            eval_suite=PAPER_SUITE, checkpoint_every=1000, eval_every_samples=4 * 10_968_539,
            resources=_GPU8, runs_here=False,
        ),
        Scale(
            name="yfcc15m-b16",
            model=VIT_B16,
            batch_size=4096,
            samples=25 * 15_000_000,         # SLIP / MaskCLIP (Dong) YFCC-15M recipe: batch 4096, 25 epochs
            # SLIP main.py: AdamW eps 1e-8, warm-up 1 epoch from --lr-start 1e-6, cosine to --lr-end 1e-5, no clipping;
            # RandomResizedCrop(224, scale=(0.5, 1.0)).
            optim=Optim(lr=5e-4, weight_decay=0.5, eps=1e-8, warmup_samples=1 * 15_000_000, warmup_start_lr=1e-6,
                        min_lr=1e-5),
            data=Data(kind="webdataset", path="/datasets/yfcc15m/{00000..01535}.tar", dataset_root="/datasets",
                      augment=True, stream=True, crop_scale=(0.5, 1.0)),
            eval_suite=PAPER_SUITE, checkpoint_every=1000, eval_every_samples=5 * 15_000_000,
            zeroshot_templates="slip",       # the 37.6 / 42.7 anchors were evaluated with SLIP's templates
            resources=_GPU8, runs_here=False,
        ),
    ]
}


# Seeds a sweep runs when --seeds is not given: at pocket three, so every table has a seed spread (a run's
# numbers do not depend on this, so it is not part of the scale's identity).
DEFAULT_SEEDS: dict[str, tuple[int, ...]] = {"pocket": (0, 1, 2)}


def default_seeds(name: str) -> tuple[int, ...]:
    return DEFAULT_SEEDS.get(name, (0,))


def get_scale(name: str) -> Scale:
    """A built-in scale by name (scale files: ``benchmark.scale_files.load_scale``)."""
    if name not in SCALES:
        raise UserError(f"unknown scale {name!r}: choose one of {', '.join(SCALES)}, or pass a scale file "
                        "(--scale FILE.yaml, see scales/README.md)")
    return SCALES[name]
