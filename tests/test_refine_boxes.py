"""The box refinement example: a short run on small images trains an IoU
predictor (its loss goes down), and gradient ascent on the predicted IoU,
through the pooling op's derivative with respect to the boxes, moves jittered
held-out boxes closer to their objects; it writes its PNG; every flag is
documented."""

import numpy as np

from example_scripts import check_every_flag_is_documented, load_example

TINY = ["--image-size", "32", "--train-images", "512", "--val-images", "32", "--batch-size", "8",
        "--width", "16", "--hidden", "64", "--steps", "1500", "--lr", "4e-3",
        "--refine-steps", "20", "--step-size", "0.05"]


def check_refinement(result):
    losses = np.asarray(result["losses"])
    assert losses.shape == (1500,) and np.all(np.isfinite(losses))
    # Steps are noisy (new images and boxes each): compare averages.
    assert losses[-100:].mean() < 0.5 * losses[:20].mean(), losses
    curve = np.asarray(result["iou_curve"])
    assert curve.shape == (21,) and curve[0] == result["iou_before"]
    # A 0.15 jitter starts the boxes at a mean IoU of about 0.6; the trained
    # predictor's gradient takes them to about 0.65-0.7. With no derivative
    # with respect to the boxes they would not move at all.
    assert 0.5 < result["iou_before"] < 0.7
    assert result["iou_after"] > result["iou_before"] + 0.03, curve
    predicted = np.asarray(result["predicted_curve"])
    assert predicted[-1] > predicted[0] + 0.05, predicted


def test_refinement_raises_iou_and_draws(tmp_path):
    out = tmp_path / "refine.png"
    result = load_example("refine_boxes").main(TINY + ["--out", str(out), "--show", "3"])
    check_refinement(result)
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


def test_roi_align_pooler_refines_too(tmp_path):
    result = load_example("refine_boxes").main(TINY + ["--pooler", "roi_align", "--show", "0",
                                         "--out", str(tmp_path / "unused.png")])
    check_refinement(result)
    assert not (tmp_path / "unused.png").exists()


def test_every_flag_is_documented(capsys):
    check_every_flag_is_documented(
        load_example("refine_boxes"), capsys,
        ["steps", "seed", "pooler", "out", "refine_steps", "step_size"])
