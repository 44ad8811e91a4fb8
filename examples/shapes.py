"""Synthetic images for the examples: coloured shapes (rectangles, ellipses,
triangles, crosses and rings, in random colours, sizes and aspect ratios) on
a noisy background, with their boxes and classes; and the IoU of boxes."""

import math
import time

import jax.numpy as jnp
import numpy as np

CLASSES = ("rectangle", "ellipse", "triangle", "cross", "ring")  # label 0 is background


def draw_shape(kind, x1, y1, x2, y2, size):
    """Boolean mask of one shape filling the box (x1, y1, x2, y2)."""
    ys, xs = np.mgrid[0:size, 0:size] + 0.5  # pixel centres
    cx, cy, rx, ry = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    inside = (xs >= x1) & (xs <= x2) & (ys >= y1) & (ys <= y2)
    u, v = (xs - cx) / rx, (ys - cy) / ry  # -1..1 across the box
    if kind == "rectangle":
        return inside
    if kind == "ellipse":
        return u * u + v * v <= 1
    if kind == "triangle":  # apex up
        return inside & (np.abs(u) <= (v + 1) / 2)
    if kind == "cross":
        return inside & ((np.abs(u) <= 0.3) | (np.abs(v) <= 0.3))
    return (u * u + v * v <= 1) & (u * u + v * v >= 0.3)  # ring


def make_dataset(rng, count, size, max_objects):
    """uint8 images [count, size, size, 3], boxes [count, M, 4] and labels
    [count, M] (0 where an image has fewer than M objects)."""
    images = np.empty((count, size, size, 3), np.uint8)
    boxes = np.zeros((count, max_objects, 4), np.float32)
    labels = np.zeros((count, max_objects), np.int32)
    lo, hi = max(size / 8, 6.0), size * 0.6
    for i in range(count):
        # A smooth random colour ramp plus pixel noise as background.
        ramp = np.linspace(0, 1, size)[None, :, None] * rng.uniform(-0.3, 0.3, 3)
        image = rng.uniform(0.2, 0.8, 3) + ramp + rng.normal(0, 0.08, (size, size, 3))
        placed = []
        for _ in range(rng.integers(1, max_objects + 1)):
            for _attempt in range(20):  # find a spot that overlaps little
                side = math.exp(rng.uniform(math.log(lo), math.log(hi)))
                aspect = math.exp(rng.uniform(-0.4, 0.4))
                w, h = side * aspect, side / aspect
                w, h = min(w, size - 1.0), min(h, size - 1.0)
                x1, y1 = rng.uniform(0, size - w), rng.uniform(0, size - h)
                box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
                if all(np_iou(box, other) < 0.05 for other in placed):
                    break
            else:
                continue
            kind = rng.integers(len(CLASSES))
            mask = draw_shape(CLASSES[kind], *box, size)
            colour = rng.uniform(0, 1, 3)
            image[mask] = colour + rng.normal(0, 0.05, (mask.sum(), 3))
            boxes[i, len(placed)], labels[i, len(placed)] = box, kind + 1
            placed.append(box)
        images[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return images, boxes, labels


def np_iou(a, b):
    """IoU of two boxes, on the host (for placing shapes and drawing)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def iou(a, b):
    """IoU of boxes a [..., 4] and b [..., 4], broadcast against each other."""
    inter = jnp.prod(jnp.clip(jnp.minimum(a[..., 2:], b[..., 2:])
                              - jnp.maximum(a[..., :2], b[..., :2]), 0), axis=-1)
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
    return inter / (area(a) + area(b) - inter)


def training_and_held_out(rng, train_images, val_images, image_size, max_objects):
    """A training set and a held-out set of images, boxes and labels, with a
    line saying what they are."""
    started = time.time()
    train = make_dataset(rng, train_images, image_size, max_objects)
    held_out = make_dataset(rng, val_images, image_size, max_objects)
    print(f"data: {train_images} training and {val_images} held-out "
          f"{image_size}x{image_size} images of {', '.join(CLASSES)} "
          f"({time.time() - started:.1f}s)")
    return train, held_out
