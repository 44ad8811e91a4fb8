"""Refine boxes by gradient ascent on a learned IoU, through jax_roi's pooling.

An IoU predictor looks at the pooled features of a box and guesses how well
the box fits the object under it. Its guess is a smooth function of the box
coordinates, because Precise RoI Pooling (jax_roi.prroi_pool) integrates the
bilinearly interpolated feature map over the box exactly, so jax.grad of the
guess with respect to the boxes says which way each edge should move. Moving
the boxes uphill, a few tens of small steps scaled by each box's width and
height, tightens them around the objects: the box refinement of IoU-Net and
ATOM.

The script makes its own data (shapes.py): images of coloured shapes on a
noisy background. A small convolutional backbone (stride 4) and a two-layer
head are trained on boxes jittered around the objects, to predict each box's
IoU with its object, in one jitted step (nnx.jit, optax AdamW). On held-out
images it jitters every object's box, refines the boxes, prints their mean
IoU with the objects before and after, and draws both to a PNG.

    pip install ".[examples]" && python examples/refine_boxes.py --help
"""

import argparse
import math
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jax_roi

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # shapes.py, beside this file
from shapes import iou, training_and_held_out  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # no progress bar without tqdm
    def tqdm(iterable, **_):
        return iterable

POOLERS = ("prroi_pool", "roi_align")
STRIDE = 4  # of the backbone's feature map


def build_parser():
    p = argparse.ArgumentParser(
        description="Train an IoU predictor on pooled box features of synthetic shapes, "
                    "then refine jittered held-out boxes by gradient ascent on the "
                    "predicted IoU through the pooling op; print the mean IoU before and "
                    "after and draw a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=6000, help="training steps")
    p.add_argument("--batch-size", type=int, default=16, help="images per training step")
    p.add_argument("--boxes", type=int, default=16,
                   help="jittered boxes per image in each training step")
    p.add_argument("--image-size", type=int, default=64, help="side of the square images, pixels")
    p.add_argument("--train-images", type=int, default=4096, help="images in the training set")
    p.add_argument("--val-images", type=int, default=256, help="held-out images to refine boxes on")
    p.add_argument("--max-objects", type=int, default=3, help="at most this many shapes an image")
    p.add_argument("--pooler", choices=POOLERS, default="prroi_pool",
                   help="prroi_pool: Precise RoI Pooling (exact integral over each bin); "
                        "roi_align: RoI Align with 2x2 bilinear samples a bin")
    p.add_argument("--output-size", type=int, default=7, help="pooled bins per side")
    p.add_argument("--width", type=int, default=32, help="channels of the feature map")
    p.add_argument("--hidden", type=int, default=256, help="width of the head's hidden layers")
    p.add_argument("--lr", type=float, default=2e-3,
                   help="peak AdamW learning rate (short warm-up, then cosine decay)")
    p.add_argument("--jitter", type=float, default=0.15,
                   help="how far held-out boxes start from their objects: centres moved by "
                        "this times a normal sample of the width and height, sides scaled "
                        "by exp of this times a normal sample")
    p.add_argument("--refine-steps", type=int, default=40, help="gradient ascent steps")
    p.add_argument("--step-size", type=float, default=0.02,
                   help="each ascent step moves a coordinate by this times the derivative "
                        "of the predicted IoU with respect to it, both measured in the "
                        "box's width (x) or height (y)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, boxes and weights")
    p.add_argument("--out", default="refine_boxes.png",
                   help="PNG to write with held-out images, ground truth and boxes before "
                        "and after refinement")
    p.add_argument("--show", type=int, default=7, help="held-out images drawn in the PNG")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "boxes", "image_size", "train_images", "val_images",
                 "max_objects", "output_size", "width", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.image_size < 16 or args.width < 2:
        p.error("--image-size must be at least 16 and --width at least 2")
    if args.refine_steps < 0 or args.show < 0:
        p.error("--refine-steps and --show must be >= 0")
    if not (args.lr > 0 and args.jitter > 0 and args.step_size > 0):
        p.error("--lr, --jitter and --step-size must be > 0")
    return args


# ------------------------------------------------------------------ boxes

def sides(boxes):
    """[w, h, w, h] of each box: the scale of each coordinate."""
    wh = boxes[..., 2:] - boxes[..., :2]
    return jnp.concatenate([wh, wh], axis=-1)


def clip_boxes(boxes, size, min_side=2.0):
    x1 = jnp.clip(boxes[..., 0], 0, size - min_side)
    y1 = jnp.clip(boxes[..., 1], 0, size - min_side)
    x2 = jnp.clip(boxes[..., 2], x1 + min_side, size)
    y2 = jnp.clip(boxes[..., 3], y1 + min_side, size)
    return jnp.stack([x1, y1, x2, y2], axis=-1)


def jitter(key, boxes, spread, size):
    """The boxes [..., 4] moved and resized at random: centres by spread
    times a normal sample of the width and height, sides scaled by exp of
    spread times a normal sample. spread broadcasts against boxes[..., 0]."""
    k_shift, k_scale = jax.random.split(key)
    shape = boxes.shape[:-1] + (2,)
    spread = jnp.asarray(spread, boxes.dtype)[..., None]
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    wh = boxes[..., 2:] - boxes[..., :2]
    centre = centre + spread * jax.random.normal(k_shift, shape, boxes.dtype) * wh
    wh = wh * jnp.exp(spread * jax.random.normal(k_scale, shape, boxes.dtype))
    return clip_boxes(jnp.concatenate([centre - wh / 2, centre + wh / 2], -1), size)


def training_boxes(key, gt_boxes, gt_labels, count, size):
    """One image's training boxes [count, 4], each around an object picked at
    random, jittered by a spread drawn uniformly from 0.02 to 0.4 (so that
    their IoUs cover 0 to 1), and each box's IoU with the object it overlaps
    most."""
    k_pick, k_spread, k_jitter = jax.random.split(key, 3)
    logits = jnp.where(gt_labels > 0, 0.0, -jnp.inf)
    pick = jax.random.categorical(k_pick, logits, shape=(count,))
    spread = jax.random.uniform(k_spread, (count,), gt_boxes.dtype, 0.02, 0.4)
    boxes = jitter(k_jitter, gt_boxes[pick], spread, size)
    overlap = jnp.where(gt_labels > 0, iou(boxes[:, None], gt_boxes[None]), 0.0)
    return boxes, overlap.max(axis=1)


# ------------------------------------------------------------------ model

def pool(name, maps, boxes, output_size):
    """Pooled features [N, L, PH, PW, C] of boxes [N, L, 4] (image pixels)
    from maps [N, H, W, C] of stride STRIDE."""
    if name == "prroi_pool":
        return jax_roi.prroi_pool(maps, boxes, output_size, 1 / STRIDE, layout="NHWC")
    return jax_roi.roi_align(maps, boxes, output_size, 1 / STRIDE, sampling_ratio=2,
                             aligned=True, layout="NHWC")


class IoUPredictor(nnx.Module):
    """A small convolutional backbone (stride 4) and a head that predicts a
    box's IoU with the object under it from the box's pooled features."""

    def __init__(self, pooler, width, hidden, output_size, rngs):
        conv = lambda i, o, s=1: nnx.Conv(i, o, (3, 3), strides=s, rngs=rngs)
        self.convs = nnx.List([conv(3, width // 2), conv(width // 2, width, 2),
                               conv(width, width), conv(width, width, 2), conv(width, width)])
        self.fc1 = nnx.Linear(width * output_size * output_size, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, 1, rngs=rngs)
        self.pooler, self.output_size = pooler, output_size

    def features(self, images):
        """Feature maps [N, H/4, W/4, C] of uint8 images [N, H, W, 3]."""
        x = images.astype(jnp.float32) / 255.0 - 0.5
        for layer in self.convs:
            x = nnx.relu(layer(x))
        return x

    def score(self, maps, boxes):
        """Predicted IoU [N, L] of boxes [N, L, 4] on the images of maps."""
        pooled = pool(self.pooler, maps, boxes, self.output_size)
        x = pooled.reshape(pooled.shape[:2] + (-1,))
        x = nnx.relu(self.fc2(nnx.relu(self.fc1(x))))
        return self.out(x)[..., 0]


# --------------------------------------------------------------- training

def make_train_step(size, boxes_per_image):
    @nnx.jit
    def train_step(model, optimizer, key, images, gt_boxes, gt_labels):
        keys = jax.random.split(key, images.shape[0])
        sample = lambda k, b, l: training_boxes(k, b, l, boxes_per_image, size)
        boxes, targets = jax.vmap(sample)(keys, gt_boxes, gt_labels)

        def loss_fn(model):
            return jnp.mean((model.score(model.features(images), boxes) - targets) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss
    return train_step


def train(model, data, args, rng):
    warmup = min(100, args.steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, args.steps)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    train_step = make_train_step(args.image_size, args.boxes)
    key, losses = jax.random.key(args.seed), []
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for step in bar:
        pick = rng.integers(0, len(data[0]), args.batch_size)
        loss = train_step(model, optimizer, jax.random.fold_in(key, step),
                          *(jnp.asarray(part[pick]) for part in data))
        losses.append(float(loss))
        if step % 10 == 9 and hasattr(bar, "set_postfix"):
            bar.set_postfix(mse=f"{np.mean(losses[-10:]):.4f}", refresh=False)
    return losses


# ------------------------------------------------------------- refinement

@nnx.jit
def feature_maps(model, images):
    return model.features(images)


@nnx.jit
def refine_step(model, maps, boxes, step_size):
    """One step of gradient ascent on the predicted IoU: the gradient with
    respect to each coordinate, measured in units of the box's width or
    height (so a box's step is the same fraction of it, whatever its size),
    moves the coordinate by step_size times that, in the same units.
    Returns the moved boxes and the predicted IoU of the boxes given."""
    predicted, pullback = jax.vjp(lambda b: model.score(maps, b), boxes)
    (grad,) = pullback(jnp.ones_like(predicted))  # each box's own derivatives
    scale = sides(boxes)
    moved = boxes + step_size * scale * (grad * scale)
    return clip_boxes(moved, maps.shape[2] * STRIDE), predicted


def refine(model, images, start, gt_boxes, valid, args, batch=64):
    """Gradient ascent from the boxes start [N, M, 4]. Returns the refined
    boxes and, for each step, the mean true and predicted IoU of the valid
    boxes."""
    maps = jnp.concatenate([feature_maps(model, jnp.asarray(images[i:i + batch]))
                            for i in range(0, len(images), batch)])
    boxes, gt_boxes = jnp.asarray(start), jnp.asarray(gt_boxes)
    mean = lambda x: float(np.asarray(x)[valid].mean())
    true_iou, predicted_iou = [], []
    bar = tqdm(range(args.refine_steps + 1), desc="refining", unit="step")
    for step in bar:
        moved, predicted = refine_step(model, maps, boxes, args.step_size)
        true_iou.append(mean(iou(boxes, gt_boxes)))
        predicted_iou.append(mean(predicted))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(iou=f"{true_iou[-1]:.3f}", predicted=f"{predicted_iou[-1]:.3f}",
                            refresh=False)
        if step < args.refine_steps:
            boxes = moved
    return np.asarray(boxes), true_iou, predicted_iou


# ----------------------------------------------------------------- output

def draw(path, images, gt_boxes, valid, before, after, true_iou, predicted_iou, count):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = min(count, len(images))
    cols = 4 if count >= 3 else count + 1
    rows = math.ceil((count + 1) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.3 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    box = lambda b, **style: Rectangle(b[:2], *(b[2:] - b[:2]), fill=False, **style)
    for i, ax in zip(range(count), axes.ravel()):
        ax.imshow(images[i], interpolation="nearest")
        for j in np.flatnonzero(valid[i]):
            ax.add_patch(box(gt_boxes[i, j], edgecolor="lime", linewidth=2))
            ax.add_patch(box(before[i, j], edgecolor="orange", linewidth=1.5, linestyle="--"))
            ax.add_patch(box(after[i, j], edgecolor="red", linewidth=1.5))
    curve = axes.ravel()[count]
    curve.axis("on")
    curve.plot(true_iou, label="true IoU")
    curve.plot(predicted_iou, label="predicted IoU")
    curve.set_xlabel("ascent step")
    curve.set_title("held-out mean", fontsize=9)
    curve.legend(fontsize=8)
    fig.suptitle("green: ground truth; orange dashed: jittered start; red: after gradient "
                 "ascent on the predicted IoU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    rng = np.random.default_rng(args.seed)
    train_data, (images, gt_boxes, gt_labels) = training_and_held_out(
        rng, args.train_images, args.val_images, args.image_size, args.max_objects)

    model = IoUPredictor(args.pooler, args.width, args.hidden, args.output_size,
                         nnx.Rngs(args.seed))
    losses = train(model, train_data, args, rng)

    valid = gt_labels > 0
    start = np.asarray(jitter(jax.random.key(args.seed + 1), jnp.asarray(gt_boxes),
                              args.jitter, args.image_size))
    refined, true_iou, predicted_iou = refine(model, images, start, gt_boxes, valid, args)
    print(f"held-out boxes ({int(valid.sum())} objects): mean IoU with their object "
          f"{true_iou[0]:.3f} jittered, {true_iou[-1]:.3f} after {args.refine_steps} steps "
          f"of gradient ascent (predicted {predicted_iou[0]:.3f} -> {predicted_iou[-1]:.3f})")
    if args.show:
        draw(args.out, images, gt_boxes, valid, start, refined, true_iou, predicted_iou,
             args.show)
        print(f"wrote {args.out}")
    elapsed = time.time() - started
    print(f"pooler {args.pooler}, {args.steps} training steps, {elapsed:.1f}s in all")
    return dict(losses=losses, iou_before=true_iou[0], iou_after=true_iou[-1],
                iou_curve=true_iou, predicted_curve=predicted_iou, seconds=elapsed)


if __name__ == "__main__":
    main(sys.argv[1:])
