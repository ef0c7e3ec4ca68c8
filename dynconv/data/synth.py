"""A deterministic, class-conditional colour+shape dataset, written as an ImageFolder.

Class ``k`` is the pair (shape ``k % 5``, palette ``k // 5``). Shape survives any channel subset (so a
single channel can always tell the 5 shapes apart); palette colours differ by different amounts in each
channel (the two first palettes differ strongly in R and B, weakly in G), so dropping channels makes the
task harder but never impossible: G alone carries only a weak colour cue.
"""
from __future__ import annotations

import colorsys
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from ..choices import SYNTH_KINDS, check_choice
from ..errors import DynconvError

SHAPES = ("disc", "square", "triangle", "ring", "cross")
_PALETTES = [("warm", (0.85, 0.40, 0.20)), ("cool", (0.20, 0.55, 0.85))]
_SUPERSAMPLE = 2


def palette(index: int) -> tuple[str, tuple[float, float, float]]:
    """Palette ``index``: two hand-picked ones, then hues spread around the colour wheel."""
    if index < len(_PALETTES):
        return _PALETTES[index]
    hue = (index * 0.381966) % 1.0  # golden-ratio steps keep successive hues apart
    return f"hue{int(hue * 360):03d}", colorsys.hsv_to_rgb(hue, 0.75, 0.85)


def class_names(num_classes: int) -> list[str]:
    return [f"{k:02d}_{SHAPES[k % len(SHAPES)]}_{palette(k // len(SHAPES))[0]}" for k in range(num_classes)]


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, radius: float) -> np.ndarray:
    r = np.hypot(u, v)
    if shape == "disc":
        return r < radius
    if shape == "square":
        return np.maximum(abs(u), abs(v)) < radius * 0.8
    if shape == "triangle":  # equilateral, circumradius = radius
        m = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = math.pi / 2 + k * 2 * math.pi / 3
            m &= u * math.cos(a) + v * math.sin(a) > -radius / 2
        return m
    if shape == "ring":
        return (r < radius) & (r > radius * 0.55)
    if shape == "cross":
        arm = radius * 0.3
        return ((abs(u) < arm) & (abs(v) < radius)) | ((abs(v) < arm) & (abs(u) < radius))
    raise ValueError(shape)


def render(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``size``×``size``×3 uint8 image of class ``label``."""
    s = size * _SUPERSAMPLE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    # background: a random low-saturation gradient plus noise
    c0, c1 = rng.uniform(0.15, 0.6, 3), rng.uniform(0.15, 0.6, 3)
    angle = rng.uniform(0, 2 * math.pi)
    t = (xx * math.cos(angle) + yy * math.sin(angle) + 0.5)[..., None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 0.04, (s, s, 3))
    # object: class shape and palette colour, with jittered pose and colour
    cx, cy = rng.uniform(-0.15, 0.15, 2)
    radius = rng.uniform(0.22, 0.34)
    rot = rng.uniform(0, 2 * math.pi)
    u = (xx - cx) * math.cos(rot) + (yy - cy) * math.sin(rot)
    v = -(xx - cx) * math.sin(rot) + (yy - cy) * math.cos(rot)
    mask = _shape_mask(SHAPES[label % len(SHAPES)], u, v, radius)
    colour = np.asarray(palette(label // len(SHAPES))[1]) * rng.uniform(0.85, 1.15) + rng.normal(0, 0.05, 3)
    img[mask] = colour + rng.normal(0, 0.03, (int(mask.sum()), 3))
    big = Image.fromarray((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(big.resize((size, size), Image.Resampling.BOX))


# the channels of each set, as data.channels takes them
CHANNELS = {"shapes": "RGB", "textures": "RGB", "sensors": "R-G-UV-IR-Depth"}


def render_sensors(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """The ``shapes`` scene of class ``label`` seen by a 5-band sensor (``size``×``size``×5 uint8): R and G as
    in ``shapes`` (the two channels it shares with the RGB set), UV (the blue band inverted: the palette cue
    that R and B carry), IR (a blurred luminance: the shape, no colour) and Depth (the luminance's edges)."""
    from PIL import ImageFilter

    rgb = render(label, size, rng)
    grey = Image.fromarray(rgb).convert("L")
    ir = np.asarray(grey.filter(ImageFilter.GaussianBlur(max(1.0, size / 24))))
    depth = np.asarray(grey.filter(ImageFilter.FIND_EDGES))
    return np.stack([rgb[..., 0], rgb[..., 1], 255 - rgb[..., 2], ir, depth], axis=-1)


def _kinds() -> dict:
    """Synthetic data sets: (class names, renderer) by name (``choices.SYNTH_KINDS``)."""
    from . import textures

    kinds = {"shapes": (class_names, lambda k, size, rng, n: render(k, size, rng)),
             "textures": (textures.class_names, textures.render),
             "sensors": (class_names, lambda k, size, rng, n: render_sensors(k, size, rng))}
    assert tuple(kinds) == SYNTH_KINDS
    return kinds


def write_dataset(out_dir: str | os.PathLike, num_classes: int = 10, train_per_class: int = 100,
                  val_per_class: int = 30, size: int = 64, seed: int = 0, overwrite: bool = False,
                  progress=None, kind: str = "shapes") -> Path:
    """Write ``out_dir/{train,val}/<class>/<i>.jpg`` of the synthetic set ``kind`` (``shapes``: colour +
    shape, easy; ``textures``: oriented 1/f textures with photo-like channels, see ``textures.py``;
    ``sensors``: the shapes scenes in 5 bands, ``<i>.npy``, see :func:`render_sensors`). Same arguments ->
    byte-identical files.

    The dataset is built in a temporary sibling folder and renamed into place, so an interrupted run
    never leaves a half-written dataset under ``out_dir``.
    """
    if num_classes < 2 or train_per_class < 1 or val_per_class < 1 or size < 8:
        raise DynconvError("synthetic dataset needs --classes >= 2, per-class counts >= 1 and --size >= 8")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DynconvError(f"{out} already exists and is not empty: choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    names_of, draw = _kinds()[check_choice(kind, SYNTH_KINDS, "synthetic data set")]
    names = names_of(num_classes)
    jobs = [(split_id, split, k, i) for split_id, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class)))
            for k in range(num_classes) for i in range(n)]
    try:
        for split_id, split, k, i in (progress(jobs) if progress else jobs):
            rng = np.random.default_rng([seed, split_id, k, i])
            folder = tmp / split / names[k]
            folder.mkdir(parents=True, exist_ok=True)
            image = draw(k, size, rng, num_classes)
            if image.shape[-1] == 3:
                Image.fromarray(image).save(folder / f"{i:05d}.jpg", quality=95)
            else:  # N-channel: H×W×C arrays, lossless
                np.save(folder / f"{i:05d}.npy", image)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
