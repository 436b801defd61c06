"""Single-label metrics on a hand-made case with worked-out values."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from stssl_jax import metrics

# C = 6. Class 3 is never predicted (precision 0), class 4 is predicted but has no samples
# (recall 0, excluded from balanced accuracy), class 5 occurs nowhere (excluded from macro).
_LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3]
_PREDS = [0, 0, 1, 1, 0, 2, 2, 2, 4, 2, 0]
_C = 6
# Rows: truth. Columns: prediction.
_CONFUSION = np.array([
    [2, 1, 0, 0, 0, 0],
    [1, 1, 0, 0, 0, 0],
    [0, 0, 3, 0, 1, 0],
    [1, 0, 1, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
    [0, 0, 0, 0, 0, 0],
])


def _logits(preds):
  # The predicted class gets log(5): softmax p = 5 / (5 + 5) = 1/2 there and 1/10 elsewhere,
  # so CE is log 2 on a correct row and log 10 on a wrong one.
  out = np.zeros((len(preds), _C), np.float32)
  out[np.arange(len(preds)), preds] = math.log(5.0)
  return out


def _padded_batch():
  """The 11 samples plus 3 padded rows with garbage labels/logits and mask False."""
  logits = np.concatenate([_logits(_PREDS), np.full((3, _C), 7.0, np.float32)])
  logits[-3:, 5] = 100.0
  labels = np.array(_LABELS + [-1, 9, 5], np.int32)
  mask = np.array([True] * 11 + [False] * 3)
  return jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask)


def test_confusion_and_loss_ignore_padding():
  logits, labels, mask = _padded_batch()
  confusion = jax.jit(metrics.confusion_update)(logits, labels, mask)
  assert confusion.dtype == jnp.int32
  np.testing.assert_array_equal(confusion, _CONFUSION)
  loss = jax.jit(metrics.ce_sum)(logits, labels, mask)
  np.testing.assert_allclose(loss, 6 * math.log(2) + 5 * math.log(10), rtol=1e-6)


def test_accumulating_batches_equals_one_batch():
  logits, labels, mask = _padded_batch()
  first = metrics.confusion_update(logits[:5], labels[:5], mask[:5])
  rest = metrics.confusion_update(logits[5:], labels[5:], mask[5:])
  np.testing.assert_array_equal(first + rest, _CONFUSION)


def test_summarize_worked_example():
  loss_sum = 6 * math.log(2) + 5 * math.log(10)
  out = metrics.summarize(_CONFUSION, loss_sum, 11)
  assert out['top1'] == 6 / 11
  # Recall over classes with samples (0..3): (2/3 + 1/2 + 3/4 + 0) / 4.
  np.testing.assert_allclose(out['balanced_acc'], 23 / 48, rtol=1e-12)
  # Macro over classes 0..4 (5 occurs nowhere). Precision: 2/4, 1/2, 3/4, 0 (never
  # predicted), 0/1. Recall: 2/3, 1/2, 3/4, 0/2, 0 (no samples). F1 = 2tp / (2tp + fp + fn):
  # 4/7, 1/2, 3/4, 0, 0.
  np.testing.assert_allclose(out['macro_precision'], (1 / 2 + 1 / 2 + 3 / 4) / 5, rtol=1e-12)
  np.testing.assert_allclose(out['macro_recall'], (2 / 3 + 1 / 2 + 3 / 4) / 5, rtol=1e-12)
  np.testing.assert_allclose(out['macro_f1'], (4 / 7 + 1 / 2 + 3 / 4) / 5, rtol=1e-12)
  np.testing.assert_allclose(out['loss'], loss_sum / 11, rtol=1e-12)
  expected = np.zeros((_C, _C))
  expected[0, :2] = [2 / 3, 1 / 3]
  expected[1, :2] = [1 / 2, 1 / 2]
  expected[2, [2, 4]] = [3 / 4, 1 / 4]
  expected[3, [0, 2]] = [1 / 2, 1 / 2]
  np.testing.assert_allclose(out['confusion'], expected, rtol=1e-12)


def test_summarize_end_to_end_from_batches():
  logits, labels, mask = _padded_batch()
  out = metrics.summarize(metrics.confusion_update(logits, labels, mask),
                          metrics.ce_sum(logits, labels, mask), jnp.sum(mask))
  assert out['top1'] == 6 / 11
  np.testing.assert_allclose(out['loss'], (6 * math.log(2) + 5 * math.log(10)) / 11, rtol=1e-6)


def test_perfect_and_empty():
  out = metrics.summarize(np.diag([3, 1, 0]), 0.0, 4)
  assert out['top1'] == out['balanced_acc'] == out['macro_precision'] == 1.0
  assert out['macro_recall'] == out['macro_f1'] == 1.0  # class 2 occurs nowhere: excluded
  np.testing.assert_array_equal(out['confusion'], np.diag([1.0, 1.0, 0.0]))
  empty = metrics.summarize(np.zeros((3, 3), np.int32), 0.0, 0)
  assert empty['top1'] == empty['macro_f1'] == 0.0 and math.isnan(empty['loss'])
