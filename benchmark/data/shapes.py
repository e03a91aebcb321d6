"""A procedural world of coloured shapes: scenes, their captions, and their rendering.

Everything is a pure function of a numpy Generator, so (seed, set, index) fixes an item byte for byte.
Colour is learned almost at once on such data (docs/evaluation.md: the chance and colour-only levels); the tasks
built on it therefore ask about shape, size, count, spatial relation and which colour goes with which shape
(attribute binding).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "cross", "heart")
COLOURS = {
    "red": (220, 45, 45), "green": (45, 185, 70), "blue": (55, 95, 235), "yellow": (235, 215, 45),
    "purple": (150, 65, 205), "orange": (245, 140, 35), "white": (235, 235, 235), "cyan": (45, 205, 215),
}
SIZES = {"small": 0.12, "large": 0.19}          # radius as a fraction of the image side
RELATIONS = ("to the left of", "to the right of", "above", "below")
NUMBERS = {1: "one", 2: "two", 3: "three"}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    size: str
    x: float   # centre, fraction of the image side
    y: float

    def phrase(self, with_size: bool = True) -> str:
        return f"a {self.size + ' ' if with_size else ''}{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    kind: str            # "single", "pair" or "count"
    relation: str = ""   # pair: objects[0] <relation> objects[1]

    def caption(self) -> str:
        a = self.objects[0]
        if self.kind == "single":
            return a.phrase()
        if self.kind == "pair":
            return f"{a.phrase()} {self.relation} {self.objects[1].phrase()}"
        return f"{NUMBERS[len(self.objects)]} {a.size} {a.colour} {a.shape}s"


def relation_of(a: Obj, b: Obj) -> str:
    dx, dy = b.x - a.x, b.y - a.y
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _place(rng: np.random.Generator, radii: list[float], axis: str | None = None) -> list[tuple[float, float]]:
    """Non-overlapping centres; for two objects with ``axis`` set, one on each side along that axis so the
    spatial relation is unambiguous."""
    m = 0.02
    if axis is not None:
        r0, r1 = radii
        main0 = rng.uniform(r0 + m, 0.5 - 0.03)
        main1 = rng.uniform(max(0.5 + 0.03, main0 + r0 + r1 + 0.02), max(0.5 + 0.03, main0 + r0 + r1 + 0.02, 1 - r1 - m))
        lo, hi = max(r0, r1) + m, 1 - max(r0, r1) - m
        c = rng.uniform(lo, hi)
        off = rng.uniform(-0.06, 0.06, size=2)
        o0, o1 = np.clip(c + off, lo, hi)
        pts = [(main0, o0), (main1, o1)] if axis == "x" else [(o0, main0), (o1, main1)]
        return pts if rng.random() < 0.5 else pts[::-1]
    for _ in range(1000):
        pts = [(rng.uniform(r + m, 1 - r - m), rng.uniform(r + m, 1 - r - m)) for r in radii]
        if all(math.dist(p, q) > radii[i] + radii[j] + 0.04
               for i, p in enumerate(pts) for j, q in enumerate(pts) if i < j):
            return pts
    raise RuntimeError("could not place objects")   # pragma: no cover - radii are small enough


def sample_object(rng: np.random.Generator, **fixed) -> Obj:
    attrs = dict(shape=SHAPES[rng.integers(len(SHAPES))], colour=list(COLOURS)[rng.integers(len(COLOURS))],
                 size=list(SIZES)[rng.integers(len(SIZES))], x=0.5, y=0.5)
    attrs.update(fixed)
    return Obj(**attrs)


def sample_scene(rng: np.random.Generator, kind: str | None = None) -> Scene:
    kind = kind or ("single", "pair", "pair", "count")[rng.integers(4)]
    if kind == "single":
        o = sample_object(rng)
        (x, y), = _place(rng, [SIZES[o.size]])
        return Scene((Obj(o.shape, o.colour, o.size, x, y),), "single")
    if kind == "pair":
        a = sample_object(rng)
        b = sample_object(rng)
        while (b.shape, b.colour) == (a.shape, a.colour) or (b.shape != a.shape and b.colour == a.colour
                                                               and rng.random() < 0.5):
            b = sample_object(rng)
        pts = _place(rng, [SIZES[a.size], SIZES[b.size]], axis="xy"[rng.integers(2)])
        a, b = (Obj(o.shape, o.colour, o.size, x, y) for o, (x, y) in zip((a, b), pts))
        return Scene((a, b), "pair", relation_of(a, b))
    n = int(rng.integers(2, 4))
    o = sample_object(rng, size="small")
    pts = _place(rng, [SIZES["small"]] * n)
    return Scene(tuple(Obj(o.shape, o.colour, "small", x, y) for x, y in pts), "count")


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        return [(cx + (r if i % 2 == 0 else r * 0.45) * math.cos(-math.pi / 2 + i * math.pi / 5),
                 cy + (r if i % 2 == 0 else r * 0.45) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    if shape == "cross":
        w = r * 0.33
        return [(cx - w, cy - r), (cx + w, cy - r), (cx + w, cy - w), (cx + r, cy - w), (cx + r, cy + w),
                (cx + w, cy + w), (cx + w, cy + r), (cx - w, cy + r), (cx - w, cy + w), (cx - r, cy + w),
                (cx - r, cy - w), (cx - w, cy - w)]
    if shape == "heart":
        pts = []
        for i in range(40):
            t = 2 * math.pi * i / 40
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((cx + r * hx / 17, cy - r * (hy + 2) / 17))
        return pts
    raise ValueError(shape)


def render(scene: Scene, size: int, rng: np.random.Generator) -> np.ndarray:
    """RGB uint8 [size, size, 3]: a dark, lightly noisy background and anti-aliased shapes."""
    big = size * SUPERSAMPLE
    bg = tuple(int(v) for v in rng.integers(10, 60, size=3))
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        cx, cy, r = o.x * big, o.y * big, SIZES[o.size] * big
        colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[o.colour])
        if o.shape == "circle":
            draw.ellipse([cx - r * 0.9, cy - r * 0.9, cx + r * 0.9, cy + r * 0.9], fill=colour)
        else:
            draw.polygon(_shape_points(o.shape, cx, cy, r), fill=colour)
    arr = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.int16)
    arr = arr + rng.normal(0, 5, size=arr.shape).round().astype(np.int16)
    return np.clip(arr, 0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
