"""Metrics on hand-computed cases, cross-checked against segmentation_models_pytorch."""

import math

import numpy as np
import pytest
import torch

from pneumolib import metrics as M


def toy_batch():
    """DATA.md section 4's toy batch, 8x8 images:
    0 empty truth, empty prediction            -> per-image Dice 1
    1 empty truth, a 1-pixel false positive    -> 0
    2 perfect, 4 pixels                        -> 1
    3 half overlap: truth 4 px, prediction the same 2x2 square shifted by one column,
      so I = 2, P = T = 4                      -> 2*2 / 8 = 0.5
    Kaggle score (1 + 0 + 1 + 0.5) / 4 = 0.625; pooled 2*(4+2) / (1 + 8 + 8) = 12/17 = 0.706.
    """
    pred = np.zeros((4, 8, 8), bool)
    truth = np.zeros((4, 8, 8), bool)
    pred[1, 0, 0] = True
    pred[2, 2:4, 2:4] = truth[2, 2:4, 2:4] = True
    truth[3, 4:6, 4:6] = True
    pred[3, 4:6, 5:7] = True
    return pred, truth


def test_toy_counts_and_scores():
    pred, truth = toy_batch()
    c = M.per_image_counts(pred, truth)
    assert c.dtype == np.int64 and c.shape == (4, 3)
    np.testing.assert_array_equal(c, [[0, 0, 0], [0, 1, 0], [4, 4, 4], [2, 4, 4]])
    assert M.dice_per_image(c) == pytest.approx(0.625)
    assert M.dice_pooled(c) == pytest.approx(12 / 17)
    assert round(M.dice_pooled(c), 3) == 0.706
    assert M.iou_pooled(c) == pytest.approx(6 / 11)
    d = M.dice_pooled(c)
    assert M.iou_pooled(c) == pytest.approx(d / (2 - d))
    assert M.iou_per_image(c) == pytest.approx((1 + 0 + 1 + 2 / 6) / 4)
    assert M.dice_positive(c) == pytest.approx(0.75)
    np.testing.assert_allclose(M.per_image_dice(c), [1, 0, 1, 0.5])


def test_toy_matches_smp():
    """The library's semantics (DATA.md table): micro-imagewise with zero_division=1 is
    Kaggle's score, micro is pooled."""
    smp_metrics = pytest.importorskip("segmentation_models_pytorch.metrics")
    pred, truth = toy_batch()
    tp, fp, fn, tn = smp_metrics.get_stats(
        torch.from_numpy(pred[:, None]).long(), torch.from_numpy(truth[:, None]).long(), mode="binary"
    )
    c = M.per_image_counts(pred, truth)
    kaggle = smp_metrics.f1_score(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=1.0)
    pooled = smp_metrics.f1_score(tp, fp, fn, tn, reduction="micro")
    # empty/empty scored 0 (older smp's default zero_division; 0.6 defaults to 1.0)
    zero_is_zero = smp_metrics.f1_score(tp, fp, fn, tn, reduction="micro-imagewise", zero_division=0.0)
    assert M.dice_per_image(c) == pytest.approx(float(kaggle))
    assert M.dice_pooled(c) == pytest.approx(float(pooled))
    assert float(zero_is_zero) == pytest.approx(0.375)  # the trap we avoid
    assert M.iou_pooled(c) == pytest.approx(
        float(smp_metrics.iou_score(tp, fp, fn, tn, reduction="micro"))
    )


def test_input_forms_agree():
    pred, truth = toy_batch()
    c = M.per_image_counts(pred, truth)
    # (N, 1, H, W), torch, uint8 0/1, probabilities with threshold
    np.testing.assert_array_equal(M.per_image_counts(pred[:, None], truth[:, None]), c)
    np.testing.assert_array_equal(M.per_image_counts(torch.from_numpy(pred), torch.from_numpy(truth)), c)
    np.testing.assert_array_equal(M.per_image_counts(pred.astype(np.uint8), truth.astype(np.uint8)), c)
    prob = np.where(pred, 0.9, 0.2).astype(np.float32)
    np.testing.assert_array_equal(M.per_image_counts(prob, truth, threshold=0.5), c)
    # the torch version, same numbers, stays a tensor
    ct = M.per_image_counts_torch(torch.from_numpy(prob)[:, None], torch.from_numpy(truth)[:, None].float(), threshold=0.5)
    assert isinstance(ct, torch.Tensor) and ct.dtype == torch.int64
    np.testing.assert_array_equal(ct.numpy(), c)
    # counts as a tensor are accepted too
    assert M.dice_pooled(torch.from_numpy(c)) == pytest.approx(12 / 17)


def test_input_errors():
    pred, truth = toy_batch()
    with pytest.raises(ValueError, match="not binary"):
        M.per_image_counts(np.where(pred, 0.9, 0.2), truth)
    with pytest.raises(ValueError, match="differs"):
        M.per_image_counts(pred[:2], truth)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        M.dice_pooled(np.zeros((4, 2)))


def test_empty_conventions():
    empty = np.zeros((3, 3), np.int64)
    assert M.dice_pooled(empty) == 1.0  # nothing to find, nothing found
    assert M.iou_pooled(empty) == 1.0
    assert M.dice_per_image(empty) == 1.0
    assert math.isnan(M.dice_positive(empty))
    none = np.zeros((0, 3), np.int64)
    assert math.isnan(M.dice_pooled(none)) and math.isnan(M.dice_per_image(none))
    # all wrong: prediction only where truth is empty
    assert M.dice_pooled([[0, 5, 0], [0, 0, 7]]) == 0.0


def test_auc_with_ties():
    # positives 0.8, 0.5, 0.5 ; negatives 0.5, 0.2
    # pairs (pos > neg = 1, tie = 0.5): 0.8: 1 + 1; 0.5: 0.5 + 1; 0.5: 0.5 + 1 -> 5 / 6
    scores = [0.8, 0.5, 0.5, 0.5, 0.2]
    labels = [1, 1, 1, 0, 0]
    assert M.auc(scores, labels) == pytest.approx(5 / 6)
    assert M.auc(torch.tensor(scores), torch.tensor(labels).bool()) == pytest.approx(5 / 6)
    assert M.auc([0.1, 0.9], [0, 1]) == 1.0
    assert M.auc([0.9, 0.1], [0, 1]) == 0.0
    assert M.auc([0.3, 0.3, 0.3], [0, 1, 1]) == 0.5
    assert math.isnan(M.auc([0.1, 0.2], [1, 1]))


def test_auc_matches_brute_force():
    rng = np.random.default_rng(0)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    y = rng.integers(0, 2, 60)
    pos, neg = s[y == 1], s[y == 0]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert M.auc(s, y) == pytest.approx(brute)


def test_sensitivity_specificity():
    pred = [1, 0, 1, 1, 0, 0]
    y = [1, 1, 1, 0, 0, 0]
    assert M.sensitivity(pred, y) == pytest.approx(2 / 3)
    assert M.specificity(pred, y) == pytest.approx(2 / 3)
    assert math.isnan(M.sensitivity([1, 0], [0, 0]))
    assert math.isnan(M.specificity([1, 0], [1, 1]))


def test_summarize():
    pred, truth = toy_batch()
    c = M.per_image_counts(pred, truth)
    s = M.summarize(c, scores=[0.1, 0.6, 0.9, 0.8])
    assert s["n_images"] == 4 and s["n_positive"] == 2
    assert s["dice_pooled"] == pytest.approx(12 / 17)
    assert s["dice_per_image"] == pytest.approx(0.625)
    assert s["dice_positive"] == pytest.approx(0.75)
    assert s["auc"] == 1.0
    assert s["sensitivity"] == 1.0 and s["specificity"] == 0.5  # the 1-px false positive
    assert s["empty_baseline_dice_per_image"] == 0.5
    # min_area removes the 1-pixel false positive
    s2 = M.summarize(c, min_area=1)
    assert s2["specificity"] == 1.0 and s2["sensitivity"] == 1.0 and math.isnan(s2["auc"])
    assert all(isinstance(v, (int, float)) for v in s.values())


def test_dedup_gathered():
    # DistributedSampler pads 5 samples to 6 on 2 ranks by repeating the first ones; the
    # gather interleaves ranks.
    idx = torch.tensor([0, 1, 2, 3, 4, 0])
    vals = torch.tensor([[10], [11], [12], [13], [14], [99]])
    names = np.array(["a", "b", "c", "d", "e", "dup"])
    perm = [3, 0, 5, 2, 4, 1]
    u, v, n = M.dedup_gathered(idx[perm], vals[perm], names[perm])
    np.testing.assert_array_equal(u, [0, 1, 2, 3, 4])
    # first occurrence of index 0 in gathered order is the row from position 1 of perm (10)
    np.testing.assert_array_equal(v[:, 0], [10, 11, 12, 13, 14])
    np.testing.assert_array_equal(n, ["a", "b", "c", "d", "e"])
    # with indices only: the positions to keep (what the training loop applies itself)
    keep = M.dedup_gathered(idx[perm])
    np.testing.assert_array_equal(keep, [1, 5, 3, 0, 4])
    np.testing.assert_array_equal(idx[perm].numpy()[keep], [0, 1, 2, 3, 4])
    with pytest.raises(ValueError):
        M.dedup_gathered([0, 1], [1, 2, 3])
