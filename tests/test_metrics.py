"""Metrics against a brute-force per-pixel oracle (rodent_gbp.metrics)."""

from __future__ import annotations

import math
import warnings

import jax
import numpy as np
import pytest

from rodent_gbp import metrics


def _oracle_counts(pred: np.ndarray, truth: np.ndarray, c: int) -> list[int]:
  tp = fp = fn = tn = 0
  for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist()):
    if p == c and t == c:
      tp += 1
    elif p == c:
      fp += 1
    elif t == c:
      fn += 1
    else:
      tn += 1
  return [tp, fp, fn, tn]


def _div(a: float, b: float) -> float:
  return a / b if b else math.nan


def _oracle_metrics(tp, fp, fn, tn) -> dict[str, float]:
  return {"accuracy": _div(tp + tn, tp + fp + fn + tn),
          "specificity": _div(tn, tn + fp), "sensitivity": _div(tp, tp + fn),
          "precision": _div(tp, tp + fp), "dsc": _div(2 * tp, 2 * tp + fp + fn)}


def _random_labels(rng, shape, absent=()):
  labels = rng.integers(0, 4, size=shape).astype(np.int32)
  for c in absent:
    labels[labels == c] = 0
  return labels


@pytest.mark.parametrize("seed,absent_pred,absent_true", [
    (0, (), ()), (1, (3,), (3,)), (2, (2,), ()), (3, (), (1,)), (4, (1, 2, 3), ()),
])
def test_counts_and_metrics_match_oracle(seed, absent_pred, absent_true):
  rng = np.random.default_rng(seed)
  pred = _random_labels(rng, (2, 5, 6), absent_pred)
  truth = _random_labels(rng, (2, 5, 6), absent_true)
  counts = np.asarray(jax.jit(metrics.confusion_counts,
                              static_argnames="num_classes")(pred, truth))
  assert counts.shape == (4, 4)
  got = metrics.metrics_from_counts(counts)
  for c in range(4):
    want_counts = _oracle_counts(pred, truth, c)
    np.testing.assert_array_equal(counts[c], want_counts)
    for name, value in _oracle_metrics(*want_counts).items():
      if math.isnan(value):
        assert np.isnan(got[name][c]), (name, c)
      else:
        assert got[name][c] == pytest.approx(value, rel=1e-12), (name, c)


def test_empty_class_policy():
  pred = np.array([[0, 1], [1, 0]])
  truth = np.array([[0, 1], [2, 0]])
  got = metrics.metrics_from_counts(metrics.confusion_counts(pred, truth))
  # Class 3: absent from both -> NaN for dsc, sensitivity, precision.
  for name in ("dsc", "sensitivity", "precision"):
    assert np.isnan(got[name][3])
  assert got["accuracy"][3] == 1.0 and got["specificity"][3] == 1.0
  # Class 2: in truth, never predicted -> precision NaN, sensitivity 0, dsc 0.
  assert np.isnan(got["precision"][2])
  assert got["sensitivity"][2] == 0.0 and got["dsc"][2] == 0.0


def test_tiny_known_answer_and_binary():
  pred = np.array([1, 1, 0, 0, 1])
  truth = np.array([1, 0, 1, 0, 1])
  counts = np.asarray(metrics.binary_counts(pred, truth))
  np.testing.assert_array_equal(counts, [2, 1, 1, 1])
  got = metrics.metrics_from_counts(counts)
  assert got["dsc"].shape == ()
  assert float(got["dsc"]) == pytest.approx(4 / 6)
  assert float(got["accuracy"]) == pytest.approx(3 / 5)
  assert float(got["specificity"]) == pytest.approx(1 / 2)
  assert metrics.scalar_row(got)["precision"] == pytest.approx(2 / 3)
  # Binary counts of masks = class-1 row of the label confusion.
  rng = np.random.default_rng(5)
  a, b = rng.random((2, 4, 7)) > 0.5
  np.testing.assert_array_equal(
      metrics.binary_counts(a, b),
      metrics.confusion_counts(a.astype(np.int32), b.astype(np.int32), 2)[1])


def _oracle_binary(pred: np.ndarray, truth: np.ndarray) -> list[int]:
  return _oracle_counts(pred.astype(np.int32), truth.astype(np.int32), 1)


def test_binary_counts_per_axis_match_oracle():
  rng = np.random.default_rng(7)
  pred, truth = rng.random((2, 3, 4, 5)) > 0.6
  per_slice = np.asarray(metrics.binary_counts(pred, truth, axis=(-2, -1)))
  assert per_slice.shape == (3, 4) and per_slice.dtype == np.int32
  for s in range(3):
    np.testing.assert_array_equal(per_slice[s], _oracle_binary(pred[s], truth[s]))
  np.testing.assert_array_equal(metrics.binary_counts(pred, truth), per_slice.sum(0))
  per_row = np.asarray(metrics.binary_counts(pred, truth, axis=-1))
  assert per_row.shape == (3, 4, 4)
  np.testing.assert_array_equal(per_row[2, 1], _oracle_binary(pred[2, 1], truth[2, 1]))
  with pytest.raises(ValueError, match="mask shapes differ"):
    metrics.binary_counts(pred, truth[:2])


def _oracle_dice(pred: np.ndarray, truth: np.ndarray) -> float:
  """2 |A n B| / (|A| + |B|) by a loop over pixels; NaN when both are empty."""
  both = size = 0
  for p, t in zip(pred.ravel().tolist(), truth.ravel().tolist()):
    both += bool(p) and bool(t)
    size += bool(p) + bool(t)
  return 2 * both / size if size else math.nan


def test_slice_dice_and_dice_from_counts_match_oracle():
  rng = np.random.default_rng(8)
  pred = rng.random((6, 5, 4)) > 0.5
  truth = rng.random((6, 5, 4)) > 0.5
  pred[1] = truth[1] = False            # both empty: NaN (the module's policy)
  pred[2] = False                       # nothing predicted: 0
  truth[3] = False                      # nothing to find: 0
  truth[4] = pred[4]                    # identical: 1
  want = np.array([_oracle_dice(p, t) for p, t in zip(pred, truth)])
  assert np.isnan(want[1]) and want[2] == want[3] == 0.0 and want[4] == 1.0
  got = metrics.slice_dice(pred, truth)
  assert got.shape == (6,) and got.dtype == np.float64
  np.testing.assert_allclose(got, want, rtol=1e-6)     # NaN where want is NaN
  counts = metrics.binary_counts(pred, truth, axis=(-2, -1))
  np.testing.assert_allclose(jax.jit(metrics.dice_from_counts)(counts), want, rtol=1e-6)
  # empty= replaces only the 0/0 case.
  ranked = np.asarray(metrics.dice_from_counts(counts, empty=0.0))
  np.testing.assert_allclose(ranked, np.nan_to_num(want, nan=0.0), rtol=1e-6)
  # The same value as metrics_from_counts' DSC, from (4,) and (..., 4) counts.
  np.testing.assert_allclose(
      metrics.dice_from_counts(np.asarray(counts)), metrics.metrics_from_counts(counts)["dsc"],
      rtol=1e-6)
  assert float(metrics.dice_from_counts(np.array([2, 1, 1, 1]))) == pytest.approx(4 / 6)
  assert np.isnan(float(metrics.dice_from_counts(np.array([0, 0, 0, 9]))))


def test_mean_over_animals_pools_then_averages():
  rng = np.random.default_rng(6)
  animals = {}
  truth_by_animal = {}
  for k, absent in enumerate([(), (3,), ()]):
    pred = _random_labels(rng, (3, 4, 5), absent)
    truth = _random_labels(rng, (3, 4, 5), absent)
    animals[f"rat{k:02d}"] = [metrics.confusion_counts(p, t)
                              for p, t in zip(pred, truth)]
    truth_by_animal[f"rat{k:02d}"] = (pred, truth)
  out = metrics.mean_over_animals(animals)
  for animal, (pred, truth) in truth_by_animal.items():
    pooled = out["counts"][animal]
    assert pooled.dtype == np.int64
    np.testing.assert_array_equal(
        pooled, [_oracle_counts(pred, truth, c) for c in range(4)])
  # Mean of per-animal metrics (not metrics of all counts), NaN left out.
  dsc = np.stack([out["per_animal"][a]["dsc"] for a in animals])
  assert np.isnan(dsc[1, 3])
  np.testing.assert_allclose(out["mean"]["dsc"][:3], dsc[:, :3].mean(axis=0))
  assert out["mean"]["dsc"][3] == pytest.approx(np.mean(dsc[[0, 2], 3]))
  assert out["n_valid"]["dsc"][3] == 2 and out["n_valid"]["dsc"][1] == 3
  table = metrics.metrics_table(out["mean"])
  assert list(table) == ["wm", "gm", "csf"]
  assert set(table["gm"]) == set(metrics.METRIC_NAMES)
  assert table["csf"]["dsc"] == pytest.approx(float(out["mean"]["dsc"][3]))


def test_mean_over_animals_all_nan_is_nan_without_warning():
  empty = np.array([[0, 0, 0, 10]])  # (C=1, 4): class absent everywhere
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = metrics.mean_over_animals({"a": empty, "b": empty})
  assert np.isnan(out["mean"]["dsc"][0]) and out["n_valid"]["dsc"][0] == 0
  assert out["mean"]["accuracy"][0] == 1.0


def test_rejects_mismatched_shapes():
  with pytest.raises(ValueError):
    metrics.confusion_counts(np.zeros((2, 2)), np.zeros((2, 3)))
  with pytest.raises(ValueError):
    metrics.metrics_from_counts(np.zeros((3, 3)))
  with pytest.raises(ValueError):
    metrics.mean_over_animals({"a": np.zeros((4,)), "b": np.zeros((2, 4))})
