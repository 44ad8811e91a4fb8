"""The detector example: a short run on small images trains (its loss goes
down), evaluates and writes its PNG; every flag is documented."""

import numpy as np
import pytest

from example_scripts import check_every_flag_is_documented, load_example

SMALL = ["--image-size", "32", "--train-images", "64", "--val-images", "8", "--batch-size", "8",
         "--width", "16", "--hidden", "32", "--jittered", "6", "--random", "4"]


def test_short_run_learns_and_draws(tmp_path):
    example = load_example("train_detector")
    out = tmp_path / "detections.png"
    result = example.main(SMALL + ["--steps", "120", "--out", str(out), "--show", "3"])
    losses = np.asarray(result["losses"])
    assert losses.shape == (120,) and np.all(np.isfinite(losses))
    # Steps are noisy (a new batch and new proposals each): compare averages.
    assert losses[-20:].mean() < 0.92 * losses[:10].mean(), losses
    assert 0 <= result["accuracy"] <= 1 and 0 < result["chance"] < 1
    assert 0 < result["iou_before"] <= 1 and 0 < result["iou_after"] <= 1
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize("pooler", ["roi_pool", "roi_align_max"])
def test_other_poolers_run(tmp_path, pooler):
    result = load_example("train_detector").main(SMALL + ["--steps", "3", "--pooler", pooler, "--show", "0",
                                          "--out", str(tmp_path / "unused.png")])
    assert len(result["losses"]) == 3 and np.all(np.isfinite(result["losses"]))
    assert not (tmp_path / "unused.png").exists()


def test_every_flag_is_documented(capsys):
    check_every_flag_is_documented(load_example("train_detector"), capsys, ["steps", "out", "pooler"])
