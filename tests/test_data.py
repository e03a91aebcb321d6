"""The embedded data: deterministic bytes, sane sets, tasks that colour alone cannot solve."""
import pytest
import json
from collections import Counter

import numpy as np

from benchmark.data import embedded, shapes
from benchmark.data.readers import read_eval_set, read_pairs_from_shards


@pytest.mark.slow
def test_same_seed_same_bytes(tmp_path):
    a = embedded.ensure(32, 300, 40, seed=5, root=tmp_path / "a")
    b = embedded.ensure(32, 300, 40, seed=5, root=tmp_path / "b")
    c = embedded.ensure(32, 300, 40, seed=6, root=tmp_path / "c")
    ma, mb, mc = (json.loads((p / "manifest.json").read_text())["files"] for p in (a, b, c))
    assert ma == mb
    assert ma["train-00000.tar"] != mc["train-00000.tar"]
    assert embedded.ensure(32, 300, 40, seed=5, root=tmp_path / "a") == a     # cached: not generated again


def test_sets_have_the_promised_content(tmp_path):
    folder = embedded.ensure(32, 200, 40, root=tmp_path)
    images, captions, report = read_pairs_from_shards([str(folder / "train-00000.tar")])
    assert images.shape == (200, 32, 32, 3) and images.dtype == np.uint8 and report.skipped == 0
    kinds = Counter("to the" in c or "above" in c or "below" in c for c in captions)
    assert kinds[True] > 40 and kinds[False] > 40                    # relations and single/count captions
    assert any(c.split()[0] in ("two", "three") for c in captions)   # counts
    _, items = read_eval_set(str(folder / "zeroshot_retrieval.tar"))
    caps = [it["captions"][0] for it in items]
    assert len(set(caps)) == len(caps), "retrieval captions must be distinct (clip_benchmark matches by index)"
    _, items = read_eval_set(str(folder / "compositionality.tar"))
    subsets = Counter(it["subset"] for it in items)
    assert set(subsets) == set(embedded.SUGARCREPE_SUBSETS)
    for it in items:
        assert it["positive"] != it["negative"]
        if it["subset"].startswith("swap"):
            # the same words in another order: a bag of words (e.g. colours alone) cannot tell them apart
            assert sorted(it["positive"].split()) == sorted(it["negative"].split())
    _, items = read_eval_set(str(folder / "vqa.tar"))
    answers = set(embedded.vqa_answers())
    assert all(q["answer"] in answers for it in items for q in it["questions"])
    assert {it["split"] for it in items} == {"train", "test"}


@pytest.mark.slow
def test_zero_shot_classes_need_shape_not_only_colour(tmp_path):
    folder = embedded.ensure(32, 100, 200, root=tmp_path)
    meta = json.loads((folder / "zeroshot_classification.meta.json").read_text())
    _, items = read_eval_set(str(folder / "zeroshot_classification.tar"))
    assert len(meta["classnames"]) == len(shapes.COLOURS) * len(shapes.SIZES) * len(shapes.SHAPES)
    # every (size, colour) appears with several shapes, so knowing colour and size leaves 1/6 at best
    by_colour_size = {}
    for it in items:
        size, colour, _ = meta["classnames"][it["label"]].split()
        by_colour_size.setdefault((size, colour), set()).add(it["label"])
    assert all(len(v) >= 3 for v in by_colour_size.values())
    assert meta["colour_only"] == 1 / len(shapes.SHAPES)


def test_zero_shot_prompts_are_training_captions():
    """Every prompt of an image's class is the caption a training scene like it gets (the grammar the text tower
    learned): no size-free or picture-of prompts, no size averaged away."""
    meta = embedded._set_meta("zeroshot_classification")
    n = 0
    for _, scene, _, item in embedded._eval_items("zeroshot_classification", 300, seed=0):
        name = meta["classnames"][item["label"]]
        assert [t.format(c=name) for t in meta["templates"]] == [scene.caption()]
        n += 1
    assert n == 300
    # and every class prompt is a caption the training generator can produce
    rng = np.random.default_rng(0)
    train_captions = {shapes.sample_scene(rng, "single").caption() for _ in range(5000)}
    assert {t.format(c=c) for c in meta["classnames"] for t in meta["templates"]} == train_captions


def test_relations_are_unambiguous():
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = shapes.sample_scene(rng, "pair")
        a, b = s.objects
        dx, dy = abs(a.x - b.x), abs(a.y - b.y)
        main, other = (dx, dy) if "left" in s.relation or "right" in s.relation else (dy, dx)
        assert main > other, s


def test_generation_writes_the_decoded_cache_that_decoding_the_shards_gives(tmp_path):
    """The training images and captions are cached while they are generated (no run decodes the shards
    again); the cache is exactly what reading the PNG shards back gives, in the same order."""
    folder = embedded.ensure(32, embedded.SHARD_SIZE + 300, 40, seed=3, root=tmp_path)   # two shards
    arr, caps = embedded.decoded_train_paths(folder, 32)
    assert embedded.cached_ok(arr) and embedded.cached_ok(caps)
    images, captions, report = read_pairs_from_shards(sorted(str(p) for p in folder.glob("train-*.tar")), 32)
    assert report.skipped == 0 and len(captions) == embedded.SHARD_SIZE + 300
    assert np.array_equal(np.load(arr), images)
    assert json.loads(caps.read_text()) == captions
    assert set(json.loads((folder / "manifest.json").read_text())["files"]).isdisjoint({arr.name, caps.name})
