"""Real evaluation datasets read from disk, never downloaded (docs/evaluation.md), in clip_benchmark's on-disk layouts.

Every reader takes the dataset root (``scale.data.dataset_root`` or ``--dataset-root``) and returns images as a
lazy source (decoded in the encoder's batches, cached per file, so a large set is never held in memory) plus
its labels, captions, hard negatives or questions. A missing file is a ``UserError`` that names the path and
the layout expected there; ``LAYOUTS`` is that layout, one entry per dataset, also written in
docs/evaluation.md.

Preprocessing is open_clip's evaluation transform (resize the shorter side to the model's image size,
bicubic, then centre crop), the transform clip_benchmark's own loaders would apply.
"""
from __future__ import annotations

import json
import os
import pickle
from collections import OrderedDict, defaultdict
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path

import numpy as np
import open_clip
from PIL import Image

from benchmark.errors import UserError

LAYOUTS = {
    "slip_templates": "slip/templates.json - SLIP's zero-shot templates (facebookresearch/SLIP templates.json), "
                      "needed by a scale whose zeroshot_templates is 'slip'",
    "imagenet1k": "imagenet1k/val/<wnid>/*.JPEG (ImageFolder, one folder per WordNet id, e.g. n01440764; "
                  "train/<wnid>/ likewise for the linear probe) - torchvision ImageNet's extracted layout",
    "cifar10": "cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} - the python pickles "
               "torchvision's CIFAR10 reads (extract cifar-10-python.tar.gz there)",
    "cifar100": "cifar100/cifar-100-python/{train,test,meta} - the python pickles torchvision's CIFAR100 reads "
                "(extract cifar-100-python.tar.gz there)",
    "mscoco_captions": "mscoco_captions/val2014/*.jpg + mscoco_captions/coco_test_karpathy.json (COCO caption "
                       "JSON of the Karpathy 5k test split, as clip_benchmark's mscoco_captions uses)",
    "flickr30k": "flickr30k/*.jpg + flickr30k/flickr30k_test_karpathy.txt (header line, then 'image.jpg,caption' "
                 "per line, as clip_benchmark's flickr30k uses)",
    "sugar_crepe": "sugar_crepe/{add_att,add_obj,replace_att,replace_obj,replace_rel,swap_att,swap_obj}.json "
                   "(SugarCrepe's files: {id: {filename, caption, negative_caption}}) + sugar_crepe/val2017/*.jpg "
                   "(COCO val2017 images)",
    "vqav2": "vqav2/v2_OpenEnded_mscoco_{train2014,val2014}_questions.json + "
             "vqav2/v2_mscoco_{train2014,val2014}_annotations.json (VQAv2's files) + "
             "vqav2/{train2014,val2014}/COCO_<split>_<image_id:012d>.jpg (COCO 2014 images)",
}

SUGARCREPE_SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")


def require(path: Path, dataset: str) -> Path:
    """``path`` if it exists, else a UserError naming it and the layout ``dataset`` needs."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{dataset}: {path} does not exist. Expected under the dataset root: {LAYOUTS[dataset]}. "
                        "Put the dataset there (it is never downloaded) or pass --dataset-root")
    return path


def dataset_root(root: str | os.PathLike | None) -> Path:
    if not root:
        raise UserError("no dataset root for the real evaluation datasets: pass --dataset-root DIR or set "
                        "data.dataset_root in the scale")
    return Path(root).expanduser()


# ---- lazy image sources -----------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _resize_crop(size: int):
    """The geometric part of open_clip's evaluation transform (Resize shorter side, bicubic; CenterCrop)."""
    t = open_clip.image_transform(size, is_train=False)
    return t.transforms[0], t.transforms[1]


def preprocess(img: Image.Image, size: int) -> np.ndarray:
    resize, crop = _resize_crop(size)
    return np.asarray(crop(resize(img.convert("RGB"))), dtype=np.uint8)


class LazyImages:
    """Images decoded on demand, for the ``Encoder``: ``item_keys`` (one identity per image) and
    ``load(indices) -> uint8 [n, size, size, 3]``."""

    workers = min(8, os.cpu_count() or 1)

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return len(self.item_keys)

    def _pil(self, i: int) -> Image.Image:
        raise NotImplementedError

    def _one(self, i: int) -> np.ndarray:
        return preprocess(self._pil(i), self.size)

    def load(self, indices) -> np.ndarray:
        indices = [int(i) for i in indices]
        if len(indices) < 4 or self.workers == 1:
            return np.stack([self._one(i) for i in indices])
        with ThreadPoolExecutor(self.workers) as pool:       # PIL decodes without the GIL
            return np.stack(list(pool.map(self._one, indices)))


class ImageFiles(LazyImages):
    def __init__(self, paths: list[Path], size: int):
        super().__init__(size)
        self.paths = [str(p) for p in paths]
        self.item_keys = [f"{p}@{size}" for p in self.paths]

    def _pil(self, i):
        try:
            with Image.open(self.paths[i]) as img:
                return img.convert("RGB")
        except FileNotFoundError:
            raise UserError(f"image {self.paths[i]} is missing (it was there when the run started); put it "
                            "back or remove the dataset from --dataset-root") from None

    def missing(self) -> list[str]:
        """The image files that do not exist."""
        return [p for p in dict.fromkeys(self.paths) if not os.path.isfile(p)]


class ArrayImages(LazyImages):
    """Small images held in memory (CIFAR's 32 px arrays), resized to the model's size when loaded."""

    def __init__(self, array: np.ndarray, keys: list[str], size: int):
        super().__init__(size)
        self.array = array
        self.item_keys = [f"{k}@{size}" for k in keys]

    def _pil(self, i):
        return Image.fromarray(self.array[i])


def concat(a: LazyImages, b: LazyImages) -> LazyImages:
    """One source over the images of ``a`` then ``b`` (same kind); item keys are kept, so features are shared."""
    if isinstance(a, ImageFiles) and isinstance(b, ImageFiles) and a.size == b.size:
        return ImageFiles(a.paths + b.paths, a.size)
    if isinstance(a, ArrayImages) and isinstance(b, ArrayImages) and a.size == b.size:
        strip = lambda keys: [k.rsplit("@", 1)[0] for k in keys]   # noqa: E731
        return ArrayImages(np.concatenate([a.array, b.array]), strip(a.item_keys) + strip(b.item_keys), a.size)
    raise TypeError(f"cannot concatenate {type(a).__name__} and {type(b).__name__}")


def present(root, names) -> tuple[list[str], list[str]]:
    """(present, absent) of dataset ``names`` under ``root``: a dataset is present when its folder exists."""
    base = dataset_root(root)
    here = [n for n in names if (base / n).is_dir()]
    return here, [n for n in names if n not in here]


def read_all(readers: dict) -> list:
    """Run every reader; when datasets are missing, one UserError lists all of them."""
    out, missing = [], []
    for name, read in readers.items():
        try:
            out.append(read())
        except UserError as e:
            missing.append(str(e))
    missing = list(dict.fromkeys(missing))               # "no dataset root" once, not once per dataset
    if missing:
        raise UserError(f"{len(missing)} of {len(readers)} datasets could not be read:\n  " + "\n  ".join(missing))
    return out


# ---- classification: ImageNet-1k, CIFAR-10/100 ------------------------------------------------------------
@lru_cache(maxsize=1)
def _cb_json(name: str):
    import clip_benchmark.datasets as cbd
    return json.loads((Path(cbd.__file__).parent / name).read_text())


TEMPLATE_SETS = ("openai", "flip7", "slip")
SLIP_KEYS = {"imagenet1k": "imagenet", "cars": "stanford_cars", "fgvc_aircraft": "aircraft"}   # SLIP's names


def templates(dataset: str, template_set: str = "openai", root=None) -> list[str]:
    """The zero-shot templates of ``dataset`` in the scale's template set (``Scale.zeroshot_templates``):

    - ``openai``: clip_benchmark's English templates (ImageNet: OpenAI's 80; its fallback: ImageNet's);
    - ``flip7``: FLIP's protocol (App. A): ImageNet with the 7-template subset of OpenAI's prompts (open_clip's
      ``SIMPLE_IMAGENET_TEMPLATES``), every other dataset as ``openai``;
    - ``slip``: SLIP's ``templates.json`` (SLIP and Dong's MaskCLIP evaluate with it), read from
      ``<dataset root>/slip/templates.json`` (the file from the SLIP repository; never downloaded).
    """
    if template_set not in TEMPLATE_SETS:
        raise UserError(f"zero-shot template set {template_set!r} is unknown: choose one of "
                        f"{', '.join(TEMPLATE_SETS)} (Scale.zeroshot_templates)")
    if template_set == "slip":
        path = require(dataset_root(root) / "slip" / "templates.json", "slip_templates")
        try:
            table = json.loads(path.read_text())
            found = table[SLIP_KEYS.get(dataset, dataset)]
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"{path} has no template list for {dataset!r} ({type(e).__name__}: {e}); use the "
                            "templates.json of the SLIP repository") from None
        return [t.replace("{}", "{c}") for t in found]
    if template_set == "flip7" and dataset == "imagenet1k":
        from open_clip.zero_shot_metadata import SIMPLE_IMAGENET_TEMPLATES
        return [t("{c}") for t in SIMPLE_IMAGENET_TEMPLATES]
    t = _cb_json("en_zeroshot_classification_templates.json")
    return list(t.get(dataset, t["imagenet1k"]))


def imagenet_wnids() -> list[str]:
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids
    return list(all_imagenet_wordnet_ids)


def read_imagenet(root, split: str, size: int):
    """(ImageFiles, labels, classnames) of ``imagenet1k/<split>/<wnid>/``. A label is the class's index in the
    fixed 1,000-class list of WordNet ids (clip_benchmark's ``all_imagenet_wordnet_ids``, the order torchvision's
    ImageFolder gives a full copy), so every split and every partial copy labels a class alike; the class
    names are clip_benchmark's (OpenAI's) 1,000 names, indexed by those labels."""
    folder = require(dataset_root(root) / "imagenet1k" / split, "imagenet1k")
    wnids = sorted(d.name for d in folder.iterdir() if d.is_dir())
    known = {w: i for i, w in enumerate(imagenet_wnids())}
    unknown = [w for w in wnids if w not in known]
    if not wnids or unknown:
        raise UserError(f"imagenet1k: {folder} must hold one folder per ImageNet-1k WordNet id "
                        f"({'none found' if not wnids else 'unknown: ' + ', '.join(unknown[:5])}). "
                        f"Expected: {LAYOUTS['imagenet1k']}")
    names = _cb_json("en_classnames.json")["imagenet1k"]
    paths, labels = [], []
    exts = (".jpeg", ".jpg", ".png")
    for w in wnids:
        files = sorted(p for p in (folder / w).iterdir() if p.suffix.lower() in exts)
        paths += files
        labels += [known[w]] * len(files)
    if not paths:
        raise UserError(f"imagenet1k: no images under {folder}. Expected: {LAYOUTS['imagenet1k']}")
    return ImageFiles(paths, size), labels, list(names)


class _ArraysOnly(pickle.Unpickler):
    """CIFAR's pickles hold dicts, lists, strings and numpy arrays; any other callable (code) is refused."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it calls {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path):
    with open(path, "rb") as f:
        try:
            return _ArraysOnly(f, encoding="latin1").load()
        except pickle.UnpicklingError as e:
            raise UserError(f"{path} is not a plain CIFAR pickle of arrays ({e}); refused unread: replace it with "
                            "the original file") from None


def read_cifar(root, name: str, split: str, size: int):
    """(ArrayImages, labels, classnames) of CIFAR-10 or CIFAR-100 from torchvision's python pickles."""
    base = dataset_root(root) / name / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python")
    if name == "cifar10":
        files = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        meta_file, names_key, label_key = "batches.meta", "label_names", "labels"
    else:
        files = ["train"] if split == "train" else ["test"]
        meta_file, names_key, label_key = "meta", "fine_label_names", "fine_labels"
    data, labels = [], []
    for f in files:
        entry = _unpickle(require(base / f, name))
        data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels += list(entry[label_key])
    classes = list(_unpickle(require(base / meta_file, name))[names_key])
    array = np.ascontiguousarray(np.concatenate(data).transpose(0, 2, 3, 1))
    return ArrayImages(array, [f"{base}/{split}/{i}" for i in range(len(array))], size), labels, classes


def read_classification(root, dataset: str, split: str, size: int):
    """(images, labels, classnames) of ``dataset`` in {imagenet1k, cifar10, cifar100}; ``split`` train or test."""
    if dataset == "imagenet1k":
        return read_imagenet(root, "train" if split == "train" else "val", size)
    if dataset in ("cifar10", "cifar100"):
        return read_cifar(root, dataset, split, size)
    raise ValueError(dataset)


# ---- retrieval: MSCOCO captions (Karpathy test), Flickr30k (Karpathy test) --------------------------------
def read_coco_captions(root, size: int, annotation: str = "coco_test_karpathy.json", images: str = "val2014"):
    """(ImageFiles, captions per image) in torchvision CocoCaptions' order: images by ascending id, each
    image's captions in annotation-file order."""
    base = dataset_root(root) / "mscoco_captions"
    ann = json.loads(require(base / annotation, "mscoco_captions").read_text())
    folder = require(base / images, "mscoco_captions")
    files = {im["id"]: im["file_name"] for im in ann["images"]}
    caps: dict[int, list[str]] = defaultdict(list)
    for a in ann["annotations"]:
        caps[a["image_id"]].append(a["caption"])
    ids = sorted(files)
    return ImageFiles([folder / files[i] for i in ids], size), [caps[i] for i in ids]


def read_flickr(root, size: int, dataset: str = "flickr30k", split: str = "test"):
    """(ImageFiles, captions per image) as clip_benchmark's Flickr reads its Karpathy text file."""
    base = dataset_root(root) / dataset
    ann = require(base / f"{dataset}_{split}_karpathy.txt", dataset)
    data: dict[str, list[str]] = OrderedDict()
    with open(ann) as f:
        f.readline()                                   # header
        for line in f:
            line = line.strip()
            if line:
                img, caption = line.split(".jpg,", 1)
                data.setdefault(img + ".jpg", []).append(caption)
    return ImageFiles([base / k for k in data], size), list(data.values())


# ---- compositionality: SugarCrepe -------------------------------------------------------------------------
def read_sugarcrepe(root, size: int, subsets=SUGARCREPE_SUBSETS):
    """(ImageFiles, items {subset, positive, negative}) over SugarCrepe's subset files, in file order."""
    base = dataset_root(root) / "sugar_crepe"
    folder = require(base / "val2017", "sugar_crepe")
    paths, items = [], []
    for subset in subsets:
        ann = json.loads(require(base / f"{subset}.json", "sugar_crepe").read_text())
        for d in ann.values():
            paths.append(folder / d["filename"])
            items.append({"subset": subset, "positive": d["caption"], "negative": d["negative_caption"]})
    return ImageFiles(paths, size), items


# ---- VQA: VQAv2 -------------------------------------------------------------------------------------------
def read_vqav2(root, split: str, size: int):
    """(ImageFiles, items) of VQAv2 ``split`` (train2014 or val2014): one image per question, items
    {question, answers (the ten human answers), answer (the most common one), question_type, answer_type}."""
    base = dataset_root(root) / "vqav2"
    qs = json.loads(require(base / f"v2_OpenEnded_mscoco_{split}_questions.json", "vqav2").read_text())["questions"]
    anns = json.loads(require(base / f"v2_mscoco_{split}_annotations.json", "vqav2").read_text())["annotations"]
    folder = require(base / split, "vqav2")
    by_qid = {a["question_id"]: a for a in anns}
    paths, items = [], []
    for q in qs:
        a = by_qid.get(q["question_id"])
        if a is None:
            raise UserError(f"vqav2: question {q['question_id']} of {split} has no annotation in "
                            f"v2_mscoco_{split}_annotations.json; the question and annotation files do not match")
        paths.append(folder / f"COCO_{split}_{q['image_id']:012d}.jpg")
        items.append({"question": q["question"], "answers": [x["answer"] for x in a["answers"]],
                      "answer": a["multiple_choice_answer"], "question_type": a.get("question_type", ""),
                      "answer_type": a.get("answer_type", "")})
    return ImageFiles(paths, size), items
