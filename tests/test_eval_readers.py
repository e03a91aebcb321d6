"""Real-dataset readers, each on tiny files written here in the real on-disk format, checked against the
reader clip_benchmark (or torchvision underneath it) would use on the same files."""
from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from benchmark.data.preprocess import normalize_images
from benchmark.errors import UserError
from benchmark.evaluation import real_datasets as R
from benchmark.evaluation import suite
from benchmark.evaluation.features import Encoder

SIZE = 32
WNIDS = ["n01440764", "n01443537", "n01484850"]          # tench, goldfish, great white shark


def _image(path: Path, rng, w: int, h: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    (img.convert(mode) if mode != "RGB" else img).save(path, quality=95)


def _pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_dataset_root(root: Path) -> Path:
    """Every real dataset the paper scales read, a few items each, in its real layout."""
    rng = np.random.default_rng(0)
    # ImageNet-1k: ImageFolder val/ and train/ with WordNet-id folders
    for split, n in (("val", 2), ("train", 4)):
        for w in WNIDS:
            for i in range(n):
                _image(root / "imagenet1k" / split / w / f"{w}_{split}_{i}.JPEG", rng, 40 + 3 * i, 30 + 5 * i)
    # CIFAR-10 / CIFAR-100: torchvision's python pickles
    c10 = root / "cifar10" / "cifar-10-batches-py"
    _pickle(c10 / "batches.meta", {"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                   "horse", "ship", "truck"], "num_cases_per_batch": 4})
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 6)]:
        _pickle(c10 / name, {"batch_label": name, "labels": rng.integers(0, 10, n).tolist(),
                             "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             "filenames": [f"{name}_{i}.png" for i in range(n)]})
    c100 = root / "cifar100" / "cifar-100-python"
    _pickle(c100 / "meta", {"fine_label_names": [f"class_{i}" for i in range(100)],
                            "coarse_label_names": [f"super_{i}" for i in range(20)]})
    for name, n in (("train", 12), ("test", 6)):
        _pickle(c100 / name, {"fine_labels": rng.integers(0, 100, n).tolist(),
                              "coarse_labels": rng.integers(0, 20, n).tolist(),
                              "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                              "filenames": [f"{name}_{i}.png" for i in range(n)]})
    # MSCOCO captions: Karpathy test JSON (COCO caption format) + val2014 images; ids not in file order
    coco = root / "mscoco_captions"
    ids = [42, 3, 19, 7] + list(range(100, 107))          # >= 10 images: clip_benchmark's R@10 needs them
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in ids]
    for k, im in enumerate(images):
        _image(coco / "val2014" / im["file_name"], rng, 48, 36, mode="L" if k == 1 else "RGB")
    anns, aid = [], 0
    for rep in range(3):                                   # captions interleaved across images
        for i in ids[: len(ids) - 2 * rep]:
            aid += 1
            anns.append({"id": aid, "image_id": i, "caption": f"caption {rep} of image {i}"})
    (coco / "coco_test_karpathy.json").write_text(json.dumps({"images": images, "annotations": anns}))
    # Flickr30k: images + Karpathy text file (header, then "file.jpg,caption"; captions may hold commas)
    fl = root / "flickr30k"
    lines = ["image,caption"]
    for i in range(10):
        _image(fl / f"{1000 + i}.jpg", rng, 50, 40)
        lines += [f"{1000 + i}.jpg,a photo, number {i}", f"{1000 + i}.jpg,another caption of {i}"]
    fl.mkdir(parents=True, exist_ok=True)
    (fl / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    # SugarCrepe: one JSON per subset naming COCO val2017 files (images shared across subsets)
    sc = root / "sugar_crepe"
    files = [f"{i:012d}.jpg" for i in (139, 285, 632)]
    for f in files:
        _image(sc / "val2017" / f, rng, 44, 44)
    for k, subset in enumerate(R.SUGARCREPE_SUBSETS):
        ann = {str(10 * k + j): {"filename": files[(k + j) % 3], "caption": f"true {subset} {j}",
                                 "negative_caption": f"false {subset} {j}"} for j in range(2)}
        (sc / f"{subset}.json").write_text(json.dumps(ann))
    # VQAv2: question + annotation JSON per split, COCO 2014 images named by image id
    vq = root / "vqav2"
    qid = 0
    for split, image_ids in (("train2014", [1, 2, 5]), ("val2014", [3])):
        questions, annotations = [], []
        for image_id in image_ids:
            _image(vq / split / f"COCO_{split}_{image_id:012d}.jpg", rng, 40, 32)
            for j, (q, a) in enumerate([("is there a cat?", "yes"), ("how many dogs?", "two")]):
                qid += 1
                humans = [a] * 6 + ["no" if a == "yes" else "3"] * 4
                questions.append({"image_id": image_id, "question": q, "question_id": qid})
                annotations.append({"question_id": qid, "image_id": image_id, "multiple_choice_answer": a,
                                    "answer_type": "yes/no" if j == 0 else "number", "question_type": q[:8],
                                    "answers": [{"answer": h, "answer_confidence": "yes", "answer_id": n + 1}
                                                for n, h in enumerate(humans)]})
        (vq / f"v2_OpenEnded_mscoco_{split}_questions.json").write_text(json.dumps({"questions": questions}))
        (vq / f"v2_mscoco_{split}_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_dataset_root(tmp_path_factory.mktemp("datasets"))


def _ours(images) -> torch.Tensor:
    """Our lazy images as the model sees them: normalised float [N, 3, H, W]."""
    x = torch.as_tensor(images.load(range(len(images)))).permute(0, 3, 1, 2)
    return normalize_images(x, "cpu")


def _theirs(dataset, n=None) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in range(n or len(dataset))])


TRANSFORM = open_clip.image_transform(SIZE, is_train=False)


def test_imagenet_reader_matches_imagefolder(root):
    from torchvision.datasets import ImageFolder
    images, labels, classes = R.read_imagenet(root, "val", SIZE)
    ref = ImageFolder(str(root / "imagenet1k" / "val"), transform=TRANSFORM)
    assert labels == ref.targets             # these three are the first wnids of the 1,000: indices 0, 1, 2
    assert len(classes) == 1000 and classes[:3] == ["tench", "goldfish", "great white shark"]   # clip_benchmark's
    assert torch.allclose(_ours(images), _theirs(ref), atol=1e-6)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar_reader_matches_torchvision(root, name, split, monkeypatch):
    from torchvision.datasets import CIFAR10, CIFAR100
    cls = CIFAR10 if name == "cifar10" else CIFAR100
    import torchvision.datasets.cifar as tv_cifar
    monkeypatch.setattr(cls, "_check_integrity", lambda self: True)    # our tiny files lack the real md5s
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)
    ref = cls(str(root / name), train=split == "train", download=False)
    images, labels, classes = R.read_cifar(root, name, split, 32)
    assert labels == list(ref.targets) and classes == ref.classes
    np.testing.assert_array_equal(images.load(range(len(images))), ref.data)      # 32 px: no resampling
    images64 = R.read_cifar(root, name, split, 64)[0]                             # the model's size: resized
    ref.transform = open_clip.image_transform(64, is_train=False)
    assert torch.allclose(_ours(images64), _theirs(ref), atol=1e-6)


def test_coco_reader_matches_cococaptions(root):
    from torchvision.datasets import CocoCaptions
    images, captions = R.read_coco_captions(root, SIZE)
    ref = CocoCaptions(str(root / "mscoco_captions" / "val2014"),
                       str(root / "mscoco_captions" / "coco_test_karpathy.json"), transform=TRANSFORM)
    assert captions == [ref[i][1] for i in range(len(ref))]
    assert captions[0] == [f"caption {r} of image 3" for r in range(3)]        # ids ascending
    assert torch.allclose(_ours(images), _theirs(ref), atol=1e-6)                  # incl. a greyscale JPEG


def test_flickr_reader_matches_clip_benchmark(root):
    from clip_benchmark.datasets.flickr import Flickr
    images, captions = R.read_flickr(root, SIZE)
    ref = Flickr(str(root / "flickr30k"), str(root / "flickr30k" / "flickr30k_test_karpathy.txt"), transform=TRANSFORM)
    assert captions == [ref[i][1] for i in range(len(ref))]
    assert captions[0] == ["a photo, number 0", "another caption of 0"]
    assert torch.allclose(_ours(images), _theirs(ref), atol=1e-6)


def test_sugarcrepe_reader_matches_clip_benchmark(root):
    from clip_benchmark.datasets.sugar_crepe import SugarCrepe
    images, items = R.read_sugarcrepe(root, SIZE)
    start = 0
    for subset in R.SUGARCREPE_SUBSETS:
        ref = SugarCrepe(str(root / "sugar_crepe" / "val2017"), str(root / "sugar_crepe" / f"{subset}.json"),
                         transform=TRANSFORM)
        mine = items[start:start + len(ref)]
        assert [[it["positive"], it["negative"]] for it in mine] == [ref[i][1] for i in range(len(ref))]
        assert {it["subset"] for it in mine} == {subset}
        sub = R.ImageFiles(images.paths[start:start + len(ref)], SIZE)
        assert torch.allclose(_ours(sub), _theirs(ref), atol=1e-6)
        start += len(ref)
    assert start == len(items) == 14 and len(set(images.item_keys)) == 3          # 3 files shared by 14 items


def test_vqav2_reader(root):
    images, items = R.read_vqav2(root, "train2014", SIZE)
    assert len(items) == 6 and len(images) == 6
    assert Path(images.paths[0]).name == "COCO_train2014_000000000001.jpg"
    assert items[0] == {"question": "is there a cat?", "answers": ["yes"] * 6 + ["no"] * 4, "answer": "yes",
                        "question_type": "is there", "answer_type": "yes/no"}
    assert images.item_keys[0] == images.item_keys[1]                             # two questions, one image
    assert images.load([0]).shape == (1, SIZE, SIZE, 3)


def test_missing_dataset_names_path_and_layout(tmp_path):
    with pytest.raises(UserError) as e:
        R.read_imagenet(tmp_path, "val", SIZE)
    msg = str(e.value)
    assert str(tmp_path / "imagenet1k" / "val") in msg and "WordNet id" in msg and "--dataset-root" in msg
    with pytest.raises(UserError, match="cifar-10-batches-py/data_batch_1"):
        R.read_cifar(tmp_path, "cifar10", "train", SIZE)
    with pytest.raises(UserError, match="no dataset root"):
        R.read_flickr("", SIZE)
    (tmp_path / "imagenet1k" / "val" / "not_a_wnid").mkdir(parents=True)
    with pytest.raises(UserError, match="unknown: not_a_wnid"):
        R.read_imagenet(tmp_path, "val", SIZE)


def _paper_like(scale, root):
    """The smoke model with a paper scale's data: real evaluation sets read from ``root``."""
    return dataclasses.replace(scale, data=dataclasses.replace(scale.data, kind="webdataset", dataset_root=str(root)))


@pytest.mark.slow
def test_suite_on_real_layouts_encodes_once_and_isolates_a_missing_dataset(root, smoke_scale, tmp_path):
    from benchmark.model import build_clip
    scale = _paper_like(smoke_scale, root)
    model = build_clip(scale, 0).eval()
    enc = Encoder(model, scale.context_length, "cpu")
    out = suite.evaluate(model, scale, scale.eval_suite, "cpu", encoder=enc)
    errors = {t: r["error"] for t, r in out.items() if isinstance(r, dict)}
    assert not errors, errors
    assert {t: [r["dataset"] for r in res] for t, res in out.items()} == {
        "zeroshot_classification": ["imagenet1k", "cifar10", "cifar100"],
        "zeroshot_retrieval": ["mscoco_captions", "flickr30k"],
        "linear_probe": ["cifar10", "cifar100", "imagenet1k"],
        "compositionality": ["sugar_crepe"], "vqa": ["vqav2"]}
    # encode once: the test images of zero-shot classification are the linear probe's test images
    unique = (3 * 2 + 3 * 4) + (26 + 18) + 11 + 10 + 3 + 4     # IN val+train, CIFAR-10/100, COCO, Flickr, SC, VQA
    assert enc.encoded_images == unique
    # a damaged dataset (its folder there, a file missing) fails its task with a message naming the path and
    # layout; the others still run
    partial = tmp_path / "partial"
    shutil.copytree(root, partial)
    (partial / "flickr30k" / "flickr30k_test_karpathy.txt").unlink()
    out = suite.evaluate(model, _paper_like(smoke_scale, partial), ["zeroshot_retrieval", "compositionality"], "cpu")
    err = out["zeroshot_retrieval"]["error"]
    assert "UserError" in err and str(partial / "flickr30k" / "flickr30k_test_karpathy.txt") in err
    assert "header line" in err                                 # the expected layout is spelled out
    assert out["compositionality"][0]["dataset"] == "sugar_crepe"
    # an absent dataset: the family runs on the ones present and names the missing one
    shutil.rmtree(partial / "flickr30k")
    out = suite.evaluate(model, _paper_like(smoke_scale, partial), ["zeroshot_retrieval"], "cpu")
    assert [r["dataset"] for r in out["zeroshot_retrieval"]] == ["mscoco_captions"]
    assert out["zeroshot_retrieval"][0]["notes"]["missing_datasets"] == ["flickr30k"]
