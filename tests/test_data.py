"""The embedded data: deterministic bytes, sane sets, tasks that colour alone cannot solve."""
import json
from collections import Counter

import numpy as np

from benchmark.data import embedded, shapes
from benchmark.data.readers import read_eval_set, read_pairs_from_shards


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


def test_zero_shot_classes_need_shape_not_only_colour(tmp_path):
    folder = embedded.ensure(32, 100, 200, root=tmp_path)
    meta = json.loads((folder / "zeroshot_classification.meta.json").read_text())
    _, items = read_eval_set(str(folder / "zeroshot_classification.tar"))
    assert len(meta["classnames"]) == len(shapes.COLOURS) * len(shapes.SHAPES)
    # every colour appears with several shapes, so knowing the colour leaves 1/6 at best
    by_colour = {}
    for it in items:
        colour = meta["classnames"][it["label"]].split()[0]
        by_colour.setdefault(colour, set()).add(it["label"])
    assert all(len(v) >= 3 for v in by_colour.values())


def test_relations_are_unambiguous():
    rng = np.random.default_rng(0)
    for _ in range(300):
        s = shapes.sample_scene(rng, "pair")
        a, b = s.objects
        dx, dy = abs(a.x - b.x), abs(a.y - b.y)
        main, other = (dx, dy) if "left" in s.relation or "right" in s.relation else (dy, dx)
        assert main > other, s
