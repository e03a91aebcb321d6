"""The embedded default data: training shards and every evaluation set, generated here from a seed.

Layout of a generated folder (webdataset shards, as img2dataset writes them)::

    train-00000.tar ...      {key}.png + {key}.txt            training pairs
    <task>.tar               {key}.png + {key}.json           one evaluation set per task family
    <task>.meta.json         class names, templates, answers, subsets
    manifest.json            generator version, parameters and the sha256 of every file

Same parameters, same bytes. Generated once into a cache folder, atomically (a killed generation leaves
nothing that looks finished; its temporary folder is cleared by the next start, and its worker processes die
with it). Every file is checked against the manifest's sha256 the first time a process uses the folder (and
again when a file's size or mtime changes): a damaged cache is regenerated, never used. Files derived from it
later (decoded images, tokens) carry a ``.sha256`` beside them and are rebuilt when it does not match.
"""
from __future__ import annotations

import fcntl
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import webdataset as wds
from tqdm import tqdm

from benchmark.checkpoint import atomic_write_bytes, file_sha256
from benchmark.processes import die_with
from benchmark.data import shapes as S

VERSION = 2                 # 2: zero-shot classes name the size, one template in the caption grammar
SHARD_SIZE = 5000
SET_IDS = {"train": 0, "zeroshot_classification": 1, "zeroshot_retrieval": 2, "linear_probe": 3,
           "compositionality": 4, "vqa": 5}
# Zero-shot prompts say what a training caption of a one-object scene says ("a small red circle", Scene.caption):
# the class names are size colour shape, the one template the caption grammar's article. A size-free prompt
# ("a red circle") or a size averaged over two templates is a sentence the text tower never saw: with them a
# CLIP that had learned shape scored at the colour-only level (notes in docs/evaluation.md).
ZS_TEMPLATES = ("a {c}",)
SUGARCREPE_SUBSETS = ("replace_obj", "replace_att", "replace_rel", "swap_obj", "swap_att", "add_obj", "add_att")


def cache_root() -> Path:
    return Path(os.environ.get("MASKBENCH_CACHE", Path.home() / ".cache" / "maskbench"))


def _rng(seed: int, set_name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SET_IDS[set_name], index])


# ---- evaluation items -------------------------------------------------------------------------------------
def zeroshot_classes() -> list[str]:
    """Zero-shot class names: every (colour, size, shape) of a one-object scene, as its caption names it."""
    return [f"{size} {colour} {shape}" for colour in S.COLOURS for size in S.SIZES for shape in S.SHAPES]


def _zeroshot_item(rng):
    scene = S.sample_scene(rng, "single")
    o = scene.objects[0]
    return scene, {"label": zeroshot_classes().index(f"{o.size} {o.colour} {o.shape}")}


def _probe_item(rng):
    scene = S.sample_scene(rng, "single")
    return scene, {"label": S.SHAPES.index(scene.objects[0].shape)}


def _other(rng, options, exclude):
    choices = [o for o in options if o not in exclude]
    return choices[rng.integers(len(choices))]


def _hard_negative(rng, subset: str):
    """A pair scene, its true caption and a hard negative in SugarCrepe's sense (``subset``)."""
    while True:
        scene = S.sample_scene(rng, "pair")
        a, b = scene.objects
        rel = scene.relation
        if subset.startswith("swap") and (a.shape == b.shape if subset == "swap_obj" else a.colour == b.colour):
            continue
        break
    pos = scene.caption()
    shapes, colours = {a.shape, b.shape}, {a.colour, b.colour}

    def cap(x, r, y, x_colour=True):
        xs = f"a {x.size} {x.colour + ' ' if x_colour else ''}{x.shape}"
        return f"{xs} {r} {y.phrase()}"

    if subset == "replace_obj":
        neg = cap(S.Obj(_other(rng, S.SHAPES, shapes), a.colour, a.size, 0, 0), rel, b)
    elif subset == "replace_att":
        neg = cap(S.Obj(a.shape, _other(rng, list(S.COLOURS), colours), a.size, 0, 0), rel, b)
    elif subset == "replace_rel":
        horizontal = rel in S.RELATIONS[:2]
        neg = cap(a, _other(rng, S.RELATIONS[2:] if horizontal else S.RELATIONS[:2], ()), b)
    elif subset == "swap_obj":
        neg = cap(S.Obj(b.shape, a.colour, a.size, 0, 0), rel, S.Obj(a.shape, b.colour, b.size, 0, 0))
    elif subset == "swap_att":
        neg = cap(S.Obj(a.shape, b.colour, a.size, 0, 0), rel, S.Obj(b.shape, a.colour, b.size, 0, 0))
    elif subset == "add_obj":
        extra = S.Obj(_other(rng, S.SHAPES, shapes), _other(rng, list(S.COLOURS), colours), "small", 0, 0)
        neg = f"{pos} and {extra.phrase(with_size=False)}"
    elif subset == "add_att":
        pos = cap(a, rel, b, x_colour=False)
        neg = cap(S.Obj(a.shape, _other(rng, list(S.COLOURS), colours), a.size, 0, 0), rel, b)
    else:
        raise ValueError(subset)
    return scene, {"subset": subset, "positive": pos, "negative": neg}


def _vqa_questions(rng, scene: S.Scene) -> list[dict]:
    qs = []
    if scene.kind == "pair":
        a, b = scene.objects
        if a.colour != b.colour:
            qs.append((f"what shape is the {a.colour} object", a.shape))
        if a.shape != b.shape:
            qs.append((f"what colour is the {a.shape}", a.colour))
        qs.append((f"what size is the {b.colour} {b.shape}", b.size))
        qs.append((f"what shape is {scene.relation} the {b.colour} {b.shape}", a.shape))
        if rng.random() < 0.5:
            qs.append((f"is the {a.colour} {a.shape} {scene.relation} the {b.colour} {b.shape}", "yes"))
        else:
            wrong = _other(rng, S.RELATIONS, (scene.relation,))
            qs.append((f"is the {a.colour} {a.shape} {wrong} the {b.colour} {b.shape}", "no"))
        qs.append(("how many objects are there", "two"))
    elif scene.kind == "count":
        o = scene.objects[0]
        qs.append((f"how many {o.colour} {o.shape}s are there", S.NUMBERS[len(scene.objects)]))
        qs.append(("what shape are the objects", o.shape))
    else:
        o = scene.objects[0]
        qs += [("what shape is the object", o.shape), ("what colour is the object", o.colour),
               ("how many objects are there", "one"), ("what size is the object", o.size)]
    order = rng.permutation(len(qs))[:3]
    return [{"question": qs[i][0], "answer": qs[i][1]} for i in order]


def vqa_answers() -> list[str]:
    return sorted(set(S.SHAPES) | set(S.COLOURS) | set(S.SIZES) | {"yes", "no"} | set(S.NUMBERS.values()))


# ---- writing ----------------------------------------------------------------------------------------------
def _eval_items(name: str, n: int, seed: int):
    """(key, scene, meta) for evaluation set ``name``; the rng of item i depends on (seed, set, i) only."""
    seen: set[str] = set()
    i = 0
    count = {"linear_probe": 3 * n, "vqa": 2 * n, "compositionality": len(SUGARCREPE_SUBSETS) * max(1, n // 4)}.get(name, n)
    produced = 0
    while produced < count:
        rng = _rng(seed, name, i)
        i += 1
        if name == "zeroshot_classification":
            scene, meta = _zeroshot_item(rng)
        elif name == "zeroshot_retrieval":
            scene = S.sample_scene(rng)
            if scene.caption() in seen:        # clip_benchmark matches captions by index: keep them distinct
                continue
            seen.add(scene.caption())
            meta = {"captions": [scene.caption()]}
        elif name == "linear_probe":
            scene, meta = _probe_item(rng)
            meta["split"] = "train" if produced < 2 * n else "test"
        elif name == "compositionality":
            scene, meta = _hard_negative(rng, SUGARCREPE_SUBSETS[produced % len(SUGARCREPE_SUBSETS)])
        elif name == "vqa":
            scene = S.sample_scene(rng)
            meta = {"questions": _vqa_questions(rng, scene), "split": "train" if produced % 4 else "test"}
        else:
            raise ValueError(name)
        yield f"{produced:07d}", scene, rng, meta
        produced += 1


def _set_meta(name: str) -> dict:
    classnames = zeroshot_classes()
    return {
        # colour_only: the accuracy of a model that knows colour and size but not shape (1/6)
        "zeroshot_classification": {"classnames": classnames, "templates": list(ZS_TEMPLATES),
                                    "chance": 1 / len(classnames), "colour_only": 1 / len(S.SHAPES)},
        "zeroshot_retrieval": {},
        "linear_probe": {"classnames": list(S.SHAPES), "chance": 1 / len(S.SHAPES)},
        "compositionality": {"subsets": list(SUGARCREPE_SUBSETS), "chance": 0.5},
        "vqa": {"answers": vqa_answers()},
    }[name]


def _writer(path: Path):
    return wds.TarWriter(str(path), mtime=0.0)   # fixed mtime: same seed, same bytes


def _write_train_shard(out: Path, shard: int, image_size: int, train_size: int, seed: int):
    """Write one training shard; returns its images (uint8 [n, H, W, 3], exactly what decoding its PNGs gives:
    PNG is lossless and they are rendered at the model's size) and captions, for the decoded cache."""
    images, captions = [], []
    with _writer(out / f"train-{shard:05d}.tar") as w:
        for i in range(shard * SHARD_SIZE, min(train_size, (shard + 1) * SHARD_SIZE)):
            rng = _rng(seed, "train", i)
            scene = S.sample_scene(rng)
            image = S.render(scene, image_size, rng)
            images.append(image)
            captions.append(scene.caption())
            w.write({"__key__": f"{i:07d}", "png": S.png_bytes(image), "txt": captions[-1].encode()})
    return np.stack(images), captions


def _write_eval_set(out: Path, name: str, image_size: int, eval_size: int, seed: int) -> int:
    n = 0
    with _writer(out / f"{name}.tar") as w:
        for key, scene, rng, meta in _eval_items(name, eval_size, seed):
            w.write({"__key__": key, "png": S.png_bytes(S.render(scene, image_size, rng)),
                     "json": json.dumps(meta, sort_keys=True).encode()})
            n += 1
    (out / f"{name}.meta.json").write_text(json.dumps(_set_meta(name), indent=1, sort_keys=True))
    return n


def generate(out: Path, image_size: int, train_size: int, eval_size: int, seed: int = 0,
             workers: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Write every file; files are independent, so they are written in parallel processes. Returns the
    training images and captions in shard order (as reading the shards back gives them)."""
    out.mkdir(parents=True, exist_ok=True)
    n_train = max(1, -(-train_size // SHARD_SIZE))
    jobs = [(_write_train_shard, (out, s, image_size, train_size, seed)) for s in range(n_train)]
    jobs += [(_write_eval_set, (out, name, image_size, eval_size, seed)) for name in SET_IDS if name != "train"]
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    results: dict[int, object] = {}
    with tqdm(total=len(jobs), desc="generating embedded data", unit="file") as bar:
        if workers == 1:
            for i, (fn, args) in enumerate(jobs):
                results[i] = fn(*args)
                bar.update()
        else:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=ctx, initializer=die_with,
                                     initargs=(os.getpid(),)) as pool:
                futures = {pool.submit(fn, *args): i for i, (fn, args) in enumerate(jobs)}
                for fut in as_completed(futures):
                    results[futures[fut]] = fut.result()
                    bar.update()
    shards = [results[i] for i in range(n_train)]
    return np.concatenate([im for im, _ in shards]), [c for _, caps in shards for c in caps]


# ---- the cache: verified at load, regenerated when damaged, temporary folders of killed runs cleared -----------------
_VERIFIED: dict[str, tuple[int, int, str]] = {}     # path -> (size, mtime_ns, sha256) checked in this process
_LOCK = ".generating.lock"                            # held by the process generating into a temporary folder


def _matches(path: Path, digest: str) -> bool:
    """``path`` has sha256 ``digest``; hashed once per process while its size and mtime stay the same."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (st.st_size, st.st_mtime_ns, digest)
    if _VERIFIED.get(str(path)) == key:
        return True
    if file_sha256(path) != digest:
        return False
    _VERIFIED[str(path)] = key
    return True


def damage(folder: Path) -> str:
    """What is wrong with a generated folder ('' when every file matches its manifest)."""
    manifest = folder / "manifest.json"
    try:
        files = json.loads(manifest.read_bytes().decode("utf-8"))["files"]
        assert isinstance(files, dict) and files
    except FileNotFoundError:
        return f"{manifest} is missing"
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"{manifest} is damaged"
    for name, digest in files.items():
        if not _matches(folder / name, digest):
            return f"{folder / name} does not match its sha256 in {manifest}"
    return ""


def cached_ok(path: Path) -> bool:
    """A derived file (decoded images, tokens) whose ``.sha256`` beside it matches."""
    try:
        digest = path.with_name(path.name + ".sha256").read_text().strip()
    except OSError:
        return False
    return _matches(path, digest)


def decoded_train_paths(folder: Path, size: int) -> tuple[Path, Path]:
    """The derived cache of the decoded training set: images uint8 [N, size, size, 3] (.npy) and captions."""
    return folder / f"train-decoded-px{size}.npy", folder / "train-captions.json"


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_cached(path: Path, data: bytes) -> None:
    """A derived file, written beside and renamed, then its digest (written last: a kill between leaves a file
    without digest, which is rebuilt)."""
    atomic_write_bytes(path, data)
    atomic_write_bytes(path.with_name(path.name + ".sha256"), hashlib.sha256(data).hexdigest().encode())


def _discard(folder: Path) -> None:
    """Move a damaged folder out of the way at once (a rename), then delete it; readers that still have its files
    open keep them."""
    trash = folder.with_name(f".damaged-{folder.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:              # another process moved it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def clear_stale(root: Path) -> list[Path]:
    """Delete temporary folders that no live process is generating into (a kill mid-generation leaves one)."""
    cleared = []
    for d in root.glob(".*"):
        if not d.is_dir() or not d.name.startswith((".v", ".damaged-")):
            continue
        if not d.name.startswith(".damaged-"):
            try:
                fd = os.open(d / _LOCK, os.O_RDWR)
            except OSError:                           # no lock yet (a generator just began) or already renamed
                if time.time() - d.stat().st_mtime < 600:
                    continue
            else:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)    # nobody holds it: its generator is gone
                except BlockingIOError:
                    continue                                        # still being generated
                finally:
                    os.close(fd)
        shutil.rmtree(d, ignore_errors=True)
        cleared.append(d)
    return cleared


def ensure(image_size: int, train_size: int, eval_size: int, seed: int = 0, root: Path | None = None) -> Path:
    """The folder holding this embedded dataset, generating it first if it is not cached or is damaged."""
    root = Path(root or cache_root() / "embedded")
    name = f"v{VERSION}-px{image_size}-train{train_size}-eval{eval_size}-seed{seed}"
    final = root / name
    if final.exists():
        problem = damage(final)
        if not problem:
            return final
        print(f"warning: the embedded data cache is damaged ({problem}); regenerating {final} (same seed, same "
              "bytes)", file=sys.stderr, flush=True)
        _discard(final)
    root.mkdir(parents=True, exist_ok=True)
    for d in clear_stale(root):
        print(f"cleared {d}, left by a generation that was killed", file=sys.stderr)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    lock = open(tmp / _LOCK, "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        images, captions = generate(tmp, image_size, train_size, eval_size, seed)
        (tmp / _LOCK).unlink()                                     # still held (the open file) until the rename
        files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        manifest = {"version": VERSION, "image_size": image_size, "train_size": train_size,
                    "eval_size": eval_size, "seed": seed, "files": files}
        atomic_write_bytes(tmp / "manifest.json", json.dumps(manifest, indent=1).encode())
        try:
            os.rename(tmp, final)
        except OSError:            # another process finished first: keep theirs
            if damage(final):
                raise
        else:                      # the decoded cache, so that no run decodes the shards again
            arr, caps = decoded_train_paths(final, image_size)
            write_cached(arr, npy_bytes(images))
            write_cached(caps, json.dumps(captions).encode())
    finally:
        lock.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def fingerprint(folder: Path) -> str:
    """A short hash of the dataset's manifest: results record which bytes they came from."""
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()[:16]
