"""Multi-label metrics on hand-made cases with the numbers worked out by hand."""

import math

import numpy as np

from stssl_jax import metrics_multilabel as mml


def test_average_precision_stepwise():
  # Ranked: + - + -  -> P@R: (1, .5), (.5, .5), (2/3, 1), (.5, 1) -> AP = .5*1 + .5*2/3.
  ap = mml.average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0]))
  np.testing.assert_allclose(ap, 0.5 + 0.5 * 2 / 3)
  # Tied top scores are one threshold: (P .5, R .5), then (2/3, 1).
  ap = mml.average_precision(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1]))
  np.testing.assert_allclose(ap, 0.5 * 0.5 + 0.5 * 2 / 3)
  assert mml.average_precision(np.array([0.3, 0.2]), np.array([0, 0])) == 0.0


def test_f1_uses_logit_threshold_and_map_averages():
  logits = np.array([[1.0, 0.4], [0.6, -1.0]])
  labels = np.array([[1, 1], [0, 0]])
  m = mml.summarize(logits, labels)
  # logit > 0.5 predicts [[1, 0], [1, 0]]: class 0 F1 2/3, class 1 F1 0; micro 2/(2+1+1).
  np.testing.assert_allclose(m['macro_f1'], 1 / 3)
  np.testing.assert_allclose(m['micro_f1'], 0.5)
  # prob > 0.5 (logit > 0) predicts [[1, 1], [1, 0]]: F1 2/3 and 1; micro 4/5.
  np.testing.assert_allclose(m['macro_f1_prob05'], 5 / 6)
  np.testing.assert_allclose(m['micro_f1_prob05'], 0.8)
  # Class 0: scores (1.0 +, 0.6 -) -> AP 1; class 1: (0.4 +, -1 -) -> AP 1.
  np.testing.assert_allclose(m['per_class_ap'], [1.0, 1.0])
  # Micro: all four pairs ranked by sigmoid: 1.0 +, 0.6 -, 0.4 +, -1 -.
  np.testing.assert_allclose(m['micro_map'], 0.5 * 1 + 0.5 * 2 / 3)
  bce = [math.log1p(math.exp(-1.0)), math.log1p(math.exp(-0.4)),
         math.log1p(math.exp(0.6)), math.log1p(math.exp(-1.0))]
  np.testing.assert_allclose(m['loss'], np.mean(bce))
