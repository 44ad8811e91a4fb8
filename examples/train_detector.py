"""Train a small two-stage detector head with jax_roi, on synthetic shapes.

The script makes its own data (shapes.py): images of coloured shapes
(rectangles, ellipses, triangles, crosses and rings, in random colours, sizes
and aspect ratios) on a noisy background. A small convolutional backbone with an
FPN-like top-down pyramid (strides 4, 8 and 16) feeds a pooler
(jax_roi.nnx.MultiScaleRoIAlign by default), and a two-layer head classifies
each proposal box and regresses its offsets to the object. Proposals are the
ground-truth boxes jittered, plus random boxes that are mostly background.

Training is one jitted step (nnx.jit, optax AdamW); per-image proposal
sampling and labelling run under vmap. At the end the script prints the
held-out classification accuracy of the proposals and the IoU of the
refined boxes, and draws a few validation images with ground truth and
predictions to a PNG.

    pip install ".[examples]" && python examples/train_detector.py --help
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

from jax_roi import nnx as roi_nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # shapes.py, beside this file
from shapes import CLASSES, iou, np_iou, training_and_held_out  # noqa: E402

POOLERS = ("multiscale", "roi_align_max", "roi_pool")
SCALES = (1 / 4, 1 / 8, 1 / 16)
# Offsets are regressed in units that make them all about unit size.
DELTA_WEIGHTS = jnp.array([10.0, 10.0, 5.0, 5.0], jnp.float32)


def build_parser():
    p = argparse.ArgumentParser(
        description="Train a two-stage detector head on synthetic shapes with jax_roi's "
                    "ROI poolers, then report held-out accuracy and box IoU and draw a PNG.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=4000, help="training steps")
    p.add_argument("--batch-size", type=int, default=16, help="images per training step")
    p.add_argument("--image-size", type=int, default=64, help="side of the square images, pixels")
    p.add_argument("--train-images", type=int, default=4096, help="images in the training set")
    p.add_argument("--val-images", type=int, default=256, help="held-out images for evaluation")
    p.add_argument("--max-objects", type=int, default=3, help="at most this many shapes an image")
    p.add_argument("--jittered", type=int, default=8,
                   help="proposals per image made by jittering ground-truth boxes")
    p.add_argument("--random", type=int, default=8,
                   help="random (mostly background) proposals per image")
    p.add_argument("--pooler", choices=POOLERS, default="multiscale",
                   help="multiscale: MultiScaleRoIAlign over the pyramid (average); "
                        "roi_align_max: the same with max pooling of the samples; "
                        "roi_pool: RoIPool on the finest (stride 4) map only")
    p.add_argument("--output-size", type=int, default=7, help="pooled bins per side")
    p.add_argument("--canonical-scale", type=float, default=32.0,
                   help="box size (pixels) pooled from the stride-16 map; half as large "
                        "goes one level finer (MultiScaleRoIAlign's canonical_scale)")
    p.add_argument("--width", type=int, default=32, help="channels of the pyramid maps")
    p.add_argument("--hidden", type=int, default=128, help="width of the head's hidden layers")
    p.add_argument("--lr", type=float, default=3e-3,
                   help="peak AdamW learning rate (short warm-up, then cosine decay)")
    p.add_argument("--seed", type=int, default=0, help="seed for data, proposals and weights")
    p.add_argument("--out", default="detections.png",
                   help="PNG to write with validation images, ground truth and predictions")
    p.add_argument("--show", type=int, default=6, help="validation images drawn in the PNG")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for name in ("steps", "batch_size", "image_size", "train_images", "val_images",
                 "max_objects", "jittered", "output_size", "width", "hidden"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.image_size < 16:
        p.error("--image-size must be at least 16 (the coarsest map has stride 16)")
    if args.random < 0 or args.show < 0 or not args.lr > 0 or not args.canonical_scale > 0:
        p.error("--random and --show must be >= 0, --lr and --canonical-scale > 0")
    return args


# -------------------------------------------------- proposals and targets

def clip_boxes(boxes, size, min_side=2.0):
    x1 = jnp.clip(boxes[..., 0], 0, size - min_side)
    y1 = jnp.clip(boxes[..., 1], 0, size - min_side)
    x2 = jnp.clip(boxes[..., 2], x1 + min_side, size)
    y2 = jnp.clip(boxes[..., 3], y1 + min_side, size)
    return jnp.stack([x1, y1, x2, y2], axis=-1)


def centre_form(boxes):
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + w / 2, boxes[..., 1] + h / 2, w, h


def encode(proposals, targets):
    px, py, pw, ph = centre_form(proposals)
    tx, ty, tw, th = centre_form(targets)
    deltas = jnp.stack([(tx - px) / pw, (ty - py) / ph, jnp.log(tw / pw), jnp.log(th / ph)], -1)
    return deltas * DELTA_WEIGHTS


def decode(proposals, deltas):
    px, py, pw, ph = centre_form(proposals)
    dx, dy, dw, dh = jnp.moveaxis(deltas / DELTA_WEIGHTS, -1, 0)
    dw, dh = jnp.minimum(dw, 4.0), jnp.minimum(dh, 4.0)  # no overflow from a wild guess
    cx, cy, w, h = px + dx * pw, py + dy * ph, pw * jnp.exp(dw), ph * jnp.exp(dh)
    return jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def sample_proposals(key, gt_boxes, gt_labels, size, jittered, random):
    """One image's proposals [P, 4]: ground-truth boxes shifted and resized
    at random, then random boxes anywhere."""
    k_pick, k_shift, k_scale, k_centre, k_side, k_aspect = jax.random.split(key, 6)
    logits = jnp.where(gt_labels > 0, 0.0, -jnp.inf)
    pick = jax.random.categorical(k_pick, logits, shape=(jittered,))
    cx, cy, w, h = centre_form(gt_boxes[pick])
    shift = 0.15 * jax.random.normal(k_shift, (jittered, 2), jnp.float32)
    scale = jnp.exp(0.2 * jax.random.normal(k_scale, (jittered, 2), jnp.float32))
    cx, cy, w, h = cx + shift[:, 0] * w, cy + shift[:, 1] * h, w * scale[:, 0], h * scale[:, 1]
    jitter = jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)

    centre = jax.random.uniform(k_centre, (random, 2), jnp.float32, 0, size)
    side = jnp.exp(jax.random.uniform(k_side, (random,), jnp.float32,
                                      math.log(6.0), math.log(0.8 * size)))
    aspect = jnp.exp(jax.random.uniform(k_aspect, (random,), jnp.float32, -0.5, 0.5))
    half = jnp.stack([side * aspect, side / aspect], -1) / 2
    anywhere = jnp.concatenate([centre - half, centre + half], -1)
    return clip_boxes(jnp.concatenate([jitter, anywhere]), size)


def label_proposals(proposals, gt_boxes, gt_labels, fg_iou=0.5):
    """Class of the best-overlapping object when its IoU >= fg_iou, else 0,
    and the regression target to that object."""
    overlap = jnp.where(gt_labels > 0, iou(proposals[:, None], gt_boxes[None]), -1.0)
    best = jnp.argmax(overlap, axis=1)
    best_iou = jnp.max(overlap, axis=1)
    labels = jnp.where(best_iou >= fg_iou, gt_labels[best], 0)
    return labels, encode(proposals, gt_boxes[best]), gt_boxes[best]


def proposals_and_targets(key, gt_boxes, gt_labels, size, jittered, random):
    """vmap of the per-image sampling and labelling over a batch."""
    keys = jax.random.split(key, gt_boxes.shape[0])
    per_image = lambda k, b, l: (lambda p: (p,) + label_proposals(p, b, l))(
        sample_proposals(k, b, l, size, jittered, random))
    return jax.vmap(per_image)(keys, gt_boxes, gt_labels)


# ------------------------------------------------------------------ model

def upsample_to(x, like):
    """Nearest-neighbour 2x upsampling, cropped to like's height and width."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return x[:, :like.shape[1], :like.shape[2]]


class Backbone(nnx.Module):
    """Four stride-2 convolutions and a top-down pyramid at strides 4, 8, 16."""

    def __init__(self, width, rngs):
        conv = lambda i, o, k=3, s=1: nnx.Conv(i, o, (k, k), strides=s, rngs=rngs)
        self.down = nnx.List([conv(3, width // 2, s=2), conv(width // 2, width, s=2),
                              conv(width, 2 * width, s=2), conv(2 * width, 2 * width, s=2)])
        self.lateral = nnx.List([conv(width, width, 1), conv(2 * width, width, 1),
                                 conv(2 * width, width, 1)])
        self.smooth = nnx.List([conv(width, width) for _ in range(3)])

    def __call__(self, images):
        x, stages = images, []
        for i, layer in enumerate(self.down):
            x = nnx.relu(layer(x))
            if i > 0:
                stages.append(x)  # strides 4, 8, 16
        maps = [self.lateral[2](stages[2])]
        for i in (1, 0):  # top-down: coarse context added to finer maps
            maps.insert(0, self.lateral[i](stages[i]) + upsample_to(maps[0], stages[i]))
        return [nnx.relu(s(m)) for s, m in zip(self.smooth, maps)]


def make_pooler(name, output_size, canonical_scale):
    if name == "roi_pool":
        return roi_nn.RoIPool(output_size, spatial_scale=SCALES[0])
    return roi_nn.MultiScaleRoIAlign(
        output_size, SCALES, sampling_ratio=2, aligned=True, canonical_scale=canonical_scale,
        canonical_level=4, mode="max" if name == "roi_align_max" else "avg")


class Detector(nnx.Module):
    """Backbone, ROI pooler and a head that scores each box for every class
    (and background) and regresses its offsets."""

    def __init__(self, pooler, width, hidden, output_size, rngs):
        self.backbone = Backbone(width, rngs)
        self.pooler = pooler
        self.fc1 = nnx.Linear(width * output_size * output_size, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, rngs=rngs)
        self.classify = nnx.Linear(hidden, len(CLASSES) + 1, rngs=rngs)
        self.regress = nnx.Linear(hidden, 4, rngs=rngs)

    def __call__(self, images, boxes):
        maps = self.backbone(images)
        if isinstance(self.pooler, roi_nn.RoIPool):
            pooled = self.pooler(maps[0], boxes)
        else:
            pooled = self.pooler(maps, boxes)  # [N, P, PH, PW, C]
        x = pooled.reshape(pooled.shape[:2] + (-1,))
        x = nnx.relu(self.fc2(nnx.relu(self.fc1(x))))
        return self.classify(x), self.regress(x)


def to_float(images):
    return images.astype(jnp.float32) / 255.0 - 0.5


def losses(model, images, proposals, labels, deltas):
    logits, predicted = model(to_float(images), proposals)
    cls = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    fg = labels > 0  # only proposals on an object have a box to regress to
    box = jnp.where(fg, optax.huber_loss(predicted, deltas).sum(-1), 0.0).sum()
    box = box / jnp.maximum(fg.sum(), 1)
    return cls + box, (cls, box)


# --------------------------------------------------------------- training

def make_train_step(size, jittered, random):
    @nnx.jit
    def train_step(model, optimizer, key, images, gt_boxes, gt_labels):
        proposals, labels, deltas, _ = proposals_and_targets(
            key, gt_boxes, gt_labels, size, jittered, random)
        grad_fn = nnx.value_and_grad(losses, has_aux=True)
        (loss, parts), grads = grad_fn(model, images, proposals, labels, deltas)
        optimizer.update(model, grads)
        return loss, parts
    return train_step


@nnx.jit
def predict(model, images, proposals):
    logits, deltas = model(to_float(images), proposals)
    size = images.shape[1]
    return jax.nn.softmax(logits), clip_boxes(decode(proposals, deltas), size, 1.0)


def evaluate(model, key, images, gt_boxes, gt_labels, args, batch=64):
    """Accuracy over every held-out proposal, and the IoU with their object
    of the foreground proposals before and after the head refines them."""
    correct = count = fg_correct = fg_count = 0
    iou_before, iou_after, majority = [], [], np.zeros(len(CLASSES) + 1)
    kept = None
    for start in range(0, len(images), batch):
        sl = slice(start, start + batch)
        proposals, labels, _, matched = proposals_and_targets(
            jax.random.fold_in(key, start), jnp.asarray(gt_boxes[sl]), jnp.asarray(gt_labels[sl]),
            args.image_size, args.jittered, args.random)
        probs, refined = predict(model, jnp.asarray(images[sl]), proposals)
        labels, probs = np.asarray(labels), np.asarray(probs)
        correct += int((probs.argmax(-1) == labels).sum())
        count += labels.size
        majority += np.bincount(labels.ravel(), minlength=len(majority))
        fg = labels > 0
        fg_correct += int((probs.argmax(-1) == labels)[fg].sum())
        fg_count += int(fg.sum())
        iou_before.append(np.asarray(iou(proposals, matched))[fg])
        iou_after.append(np.asarray(iou(refined, matched))[fg])
        if start == 0:
            kept = (np.asarray(proposals), probs, np.asarray(refined))
    mean = lambda parts: float(np.concatenate(parts).mean()) if fg_count else float("nan")
    return dict(accuracy=correct / count, chance=majority.max() / majority.sum(),
                object_accuracy=fg_correct / max(fg_count, 1), iou_before=mean(iou_before),
                iou_after=mean(iou_after), first_batch=kept)


class Progress:
    """tqdm when it is installed, else a plain one-line bar."""

    def __init__(self, total):
        self.total, self.start = total, time.time()
        try:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="training", unit="step")
        except ImportError:
            self.bar = None

    def update(self, done, loss):
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
            self.bar.update(done - self.bar.n)
            return
        filled = int(30 * done / self.total)
        print(f"\rtraining [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} "
              f"loss {loss:.3f} {time.time() - self.start:.0f}s", end="", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        else:
            print()


# ----------------------------------------------------------------- output

def nms(boxes, scores, threshold=0.4):
    """Greedy non-maximum suppression: indices of the boxes kept."""
    order, keep = np.argsort(-scores), []
    for i in order:
        if all(np_iou(boxes[i], boxes[j]) < threshold for j in keep):
            keep.append(i)
    return keep


def draw(path, images, gt_boxes, gt_labels, first_batch, count, min_score=0.6):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    _, probs, refined = first_batch
    count = min(count, len(images), len(probs))
    cols = min(count, 3)
    rows = max(1, math.ceil(count / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, ax in zip(range(count), axes.ravel()):
        ax.imshow(images[i], interpolation="nearest")
        for box, label in zip(gt_boxes[i], gt_labels[i]):
            if label > 0:
                ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False,
                                       edgecolor="lime", linewidth=2, linestyle="--"))
        cls, score = probs[i].argmax(-1), probs[i].max(-1)
        candidates = np.flatnonzero((cls > 0) & (score >= min_score))
        for j in candidates[nms(refined[i][candidates], score[candidates])]:
            box = refined[i][j]
            ax.add_patch(Rectangle(box[:2], *(box[2:] - box[:2]), fill=False,
                                   edgecolor="red", linewidth=1.5))
            ax.text(box[0], box[1] - 1, f"{CLASSES[cls[j] - 1]} {score[j]:.2f}", color="white",
                    fontsize=7, backgroundcolor="red")
    fig.suptitle("green dashed: ground truth; red: predictions (refined boxes, score >= "
                 f"{min_score})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    started = time.time()
    rng = np.random.default_rng(args.seed)
    train, val = training_and_held_out(rng, args.train_images, args.val_images,
                                       args.image_size, args.max_objects)

    key = jax.random.key(args.seed)
    pooler = make_pooler(args.pooler, args.output_size, args.canonical_scale)
    model = Detector(pooler, args.width, args.hidden, args.output_size, nnx.Rngs(args.seed))
    warmup = min(100, args.steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, args.steps)
    optimizer = nnx.Optimizer(model, optax.adamw(schedule, weight_decay=1e-4), wrt=nnx.Param)
    train_step = make_train_step(args.image_size, args.jittered, args.random)

    history, progress = [], Progress(args.steps)
    for step in range(args.steps):
        pick = rng.integers(0, args.train_images, args.batch_size)
        loss, _ = train_step(model, optimizer, jax.random.fold_in(key, step),
                             jnp.asarray(train[0][pick]), jnp.asarray(train[1][pick]),
                             jnp.asarray(train[2][pick]))
        history.append(float(loss))
        if step % 10 == 9 or step == args.steps - 1:
            progress.update(step + 1, float(np.mean(history[-10:])))
    progress.close()

    result = evaluate(model, jax.random.key(args.seed + 1), *val, args)
    print(f"held-out proposals: classification accuracy {result['accuracy']:.3f} "
          f"(chance, always the commonest class: {result['chance']:.3f}); on the proposals "
          f"that overlap an object: {result['object_accuracy']:.3f} (chance 1/{len(CLASSES)})")
    print(f"held-out object proposals: mean IoU with their object {result['iou_before']:.3f} "
          f"as proposed, {result['iou_after']:.3f} after box regression")
    if args.show:
        draw(args.out, val[0], val[1], val[2], result["first_batch"], args.show)
        print(f"wrote {args.out}")
    elapsed = time.time() - started
    print(f"pooler {args.pooler}, {args.steps} steps, {elapsed:.1f}s in all")
    return dict(losses=history, accuracy=result["accuracy"], chance=result["chance"],
                object_accuracy=result["object_accuracy"],
                iou_before=result["iou_before"], iou_after=result["iou_after"], seconds=elapsed)


if __name__ == "__main__":
    main(sys.argv[1:])
