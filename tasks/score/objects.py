"""Objects in frames: palette pixels, connected components, ideal-shape fit, edge sharpness."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..worlds.common import BACKGROUND, COLORS, SHAPES, shape_mask

MIN_ALPHA = 0.5            # a pixel belongs to a color when it is at least half that color over the background
MAX_RESIDUAL = 40.0        # off the background-to-color line by more than this (0-255) is no palette color
MIN_AREA = 0.01            # smallest object, as a fraction of the frame's pixels
SIZE_RANGE = (0.02, 0.40)  # an object's area as a share of the frame (the worlds draw 0.03-0.25)
MAX_STRAY = 0.05           # stray foreground pixels allowed, as a fraction of the objects' area (codec noise)
MIN_IOU, MIN_MARGIN = 0.80, 0.04   # the best ideal shape must fit this well, and this much better than the next
MAX_EDGE_WIDTH = 2.0       # soft-edge pixels per pixel of perimeter: a blurred or smeared object is wider


@dataclass
class FrameObject:
    color: str
    area: int
    size: float            # area as a share of the frame
    x: float               # centroid, fraction of the frame
    y: float
    shape: str             # best-fitting ideal shape, or "none"
    iou: float
    edge_width: float


def palette_alpha(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) in [0, 1] or uint8 -> per pixel the best palette index (-1: none) and its coverage alpha."""
    f = frame.astype(np.float32) * (255.0 if frame.dtype != np.uint8 and frame.max() <= 1.0 else 1.0)
    d = f - np.asarray(BACKGROUND, np.float32)
    best, alpha, residual = np.full(f.shape[:2], -1), np.zeros(f.shape[:2], np.float32), np.full(f.shape[:2], np.inf)
    for i, rgb in enumerate(COLORS.values()):
        v = np.asarray(rgb, np.float32) - np.asarray(BACKGROUND, np.float32)
        a = (d @ v) / float(v @ v)
        r = np.linalg.norm(d - a[..., None] * v, axis=-1)
        better = (a > 0.15) & (r < residual)
        best, alpha, residual = np.where(better, i, best), np.where(better, a, alpha), np.where(better, r, residual)
    best[residual > MAX_RESIDUAL] = -1
    return best, alpha


def fit_shape(mask: np.ndarray) -> tuple[str, float, float]:
    """Best ideal shape for a component: (shape, IoU, margin over the second best)."""
    area = float(mask.sum())
    ys, xs = np.nonzero(mask)
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    extents = {"circle": 2 * np.sqrt(area / np.pi), "square": np.sqrt(area), "triangle": np.sqrt(2 * area)}
    ious = {}
    for shape in SHAPES:
        e = extents[shape]
        centre_y = cy - e / 6 if shape == "triangle" else cy   # a triangle's centroid sits e/6 below its box centre
        ideal = shape_mask(shape, mask.shape[0], cx, centre_y, e) >= 0.5
        ious[shape] = float((ideal & mask).sum() / max((ideal | mask).sum(), 1))
    ranked = sorted(ious, key=ious.get, reverse=True)
    return ranked[0], ious[ranked[0]], ious[ranked[0]] - ious[ranked[1]]


def edge_width(alpha: np.ndarray, mask: np.ndarray) -> float:
    """Soft pixels (0.15 < alpha < 0.85) around a component per pixel of its perimeter."""
    near = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_erosion(mask, iterations=3)
    soft = near & (alpha > 0.15) & (alpha < 0.85)
    perimeter = max(float((mask & ~ndimage.binary_erosion(mask)).sum()), 1.0)
    return float(soft.sum()) / perimeter


def frame_objects(frame: np.ndarray) -> tuple[list[FrameObject], int, dict[str, int]]:
    """The objects of one frame (largest component per color), the stray foreground pixel count, and
    per color how many components of at least MIN_AREA it has (a split object has two)."""
    best, alpha = palette_alpha(frame)
    h, w = best.shape
    fg = alpha >= MIN_ALPHA
    objects, stray, blobs = [], int((fg & (best < 0)).sum()), {}
    for i, name in enumerate(COLORS):
        labels, n = ndimage.label(fg & (best == i), structure=np.ones((3, 3)))
        if n == 0:
            continue
        sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
        main = int(np.argmax(sizes)) + 1
        big = int((sizes >= MIN_AREA * h * w).sum())
        stray += int(sizes.sum() - sizes[main - 1]) if big else int(sizes.sum())
        if not big:
            continue
        blobs[name] = big
        mask = labels == main
        ys, xs = np.nonzero(mask)
        shape, iou, margin = fit_shape(mask)
        objects.append(FrameObject(name, int(mask.sum()), float(mask.sum()) / (h * w), (xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h,
                                   shape if iou >= MIN_IOU and margin >= MIN_MARGIN else "none", iou,
                                   edge_width(alpha, mask)))
    return objects, stray, blobs
