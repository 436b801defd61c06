"""Pseudo-label precision, recall and accuracy: hand-made cases and the live train step."""

import math

import jax
import numpy as np
import pytest

from configs import test as test_config
from stssl_jax import pl_quality, train
from stssl_jax.models import stssl as models
from stssl_jax.models.stssl import STSSLModel
from tests.test_train_step import build, synthetic_batch


def _summary(label, weight, true, c, multilabel, source='teacher'):
  counts = pl_quality.counts(np.asarray(label), np.asarray(weight, np.float32),
                             np.asarray(true), c, multilabel)
  return pl_quality.summarize(pl_quality.flatten(source, jax.device_get(counts)))


def test_single_label_hand_made():
  # 6 samples, 3 classes. Accepted: rows 0-3. Pseudo-labels 0,0,1,2 vs truth 0,1,1,1:
  # class 0 proposed twice (1 right), class 1 once (right), class 2 once (wrong).
  out = _summary(label=[0, 0, 1, 2, 2, 1], weight=[1, 1, 1, 1, 0, 0],
                 true=[0, 1, 1, 1, 2, 0], c=3, multilabel=False)
  assert out['pl/teacher/recall'] == pytest.approx(4 / 6)
  assert out['pl/teacher/accuracy'] == pytest.approx(2 / 4)
  assert out['pl/teacher/precision'] == pytest.approx((1 / 2 + 1 + 0) / 3)
  # Rows 4 (right) and 5 (wrong) are rejected but count when the mask is ignored.
  assert out['pl/teacher/accuracy_all'] == pytest.approx(3 / 6)
  assert not any(k.startswith(pl_quality.PREFIX) for k in out)


def test_single_label_soft_weights_and_soft_labels():
  # SoftMatch-style weights; soft labels count as their argmax.
  label = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], np.float32)
  out = _summary(label, weight=[0.5, 1.0, 0.25], true=[0, 0, 0], c=2, multilabel=False)
  assert out['pl/teacher/recall'] == pytest.approx(1.75 / 3)
  assert out['pl/teacher/accuracy'] == pytest.approx(0.75 / 1.75)
  # Class 0: 0.75 of 0.75 right; class 1: 0 of 1.0.
  assert out['pl/teacher/precision'] == pytest.approx((1.0 + 0.0) / 2)


def test_nothing_accepted_is_undefined_not_zero():
  out = _summary(label=[1, 2], weight=[0, 0], true=[1, 2], c=3, multilabel=False)
  assert out['pl/teacher/recall'] == 0.0
  assert math.isnan(out['pl/teacher/accuracy']) and math.isnan(out['pl/teacher/precision'])
  assert out['pl/teacher/accuracy_all'] == 1.0


def test_multilabel_per_class_hand_made():
  # 4 samples, 2 classes, per-entry masks.
  label = [[1, 0], [1, 1], [0, 1], [0, 0]]
  weight = [[1, 1], [1, 0], [1, 1], [0, 1]]
  true = [[1, 0], [0, 1], [0, 0], [1, 1]]
  out = _summary(label, weight, true, c=2, multilabel=True, source='image_only')
  # Class 0: accepted rows 0,1,2; right on 0 and 2; accepted positives rows 0,1 (row 0 true).
  # Class 1: accepted rows 0,2,3; right on 0 only; accepted positives row 2 (false).
  want = {'recall': (3 / 4, 3 / 4), 'accuracy': (2 / 3, 1 / 3), 'precision': (1 / 2, 0.0),
          'accuracy_all': (2 / 4, 2 / 4)}
  for metric, (c0, c1) in want.items():
    assert out[f'pl_class/image_only/{metric}/00'] == pytest.approx(c0), metric
    assert out[f'pl_class/image_only/{metric}/01'] == pytest.approx(c1), metric
    assert out[f'pl/image_only/{metric}'] == pytest.approx((c0 + c1) / 2), metric


def test_interval_pools_counts_not_ratios():
  """A step with 1 accepted sample weighs 1/(1+3), not 1/2, in the interval's accuracy."""
  a = pl_quality.counts(np.array([0, 1, 1, 1]), np.array([1, 0, 0, 0], np.float32),
                        np.array([1, 1, 1, 1]), 2, False)  # 1 accepted, wrong.
  b = pl_quality.counts(np.array([1, 1, 1, 0]), np.array([1, 1, 1, 0], np.float32),
                        np.array([1, 1, 1, 1]), 2, False)  # 3 accepted, right.
  mean = jax.tree_util.tree_map(lambda x, y: (np.asarray(x) + np.asarray(y)) / 2, a, b)
  out = pl_quality.summarize(pl_quality.flatten('teacher', mean))
  assert out['pl/teacher/accuracy'] == pytest.approx(3 / 4)
  assert out['pl/teacher/recall'] == pytest.approx(4 / 8)


def _student_weak_logits(config, state, batch):
  model = models.build_model(config)
  logits, _ = model.apply({'params': jax.device_get(state.params)}, batch['ulb_image_weak'],
                          train=False, method=STSSLModel.student)
  return np.asarray(logits)


@pytest.mark.parametrize('every', [1, 2])
def test_train_step_logs_teacher_and_image_only(every):
  """The step's image-only counts are the student's weak-view FixMatch proposal."""
  config = test_config.get_config('stssl_fixmatch')
  config.image_only_pl_every = every
  config.model.drop_path = 0.0  # Train-mode forward == eval-mode forward.
  batch = synthetic_batch(config)
  state, _, _ = build(config)
  p = jax.nn.softmax(_student_weak_logits(config, state, batch))
  conf = np.asarray(p.max(-1))
  # A threshold at the median confidence accepts about half: both outcomes are exercised.
  config.threshold = (float(np.median(conf)),)
  state, step, _ = build(config)
  new_state, m = step(state, batch)
  out = pl_quality.summarize(jax.device_get(m))
  accepted = conf >= config.threshold[0]
  correct = np.asarray(p.argmax(-1)) == batch['ulb_label']
  assert 0 < accepted.sum() < len(accepted)
  assert out['pl/image_only/recall'] == pytest.approx(accepted.mean(), abs=1e-6)
  assert out['pl/image_only/accuracy_all'] == pytest.approx(correct.mean(), abs=1e-6)
  assert out['pl/image_only/accuracy'] == pytest.approx(correct[accepted].mean(), abs=1e-6)
  for metric in pl_quality.METRICS:
    assert f'pl/teacher/{metric}' in out
  # The teacher's recall is its own mask ratio.
  assert out['pl/teacher/recall'] == pytest.approx(float(m['mask_ratio']), abs=1e-6)
  # On skipped steps (every = 2, step 1) the image-only counts are zero.
  _, m2 = step(new_state, synthetic_batch(config, seed=1))
  n2 = float(m2['pl_counts/image_only/n'])
  assert n2 == (len(conf) if every == 1 else 0.0)


def test_plain_fixmatch_logs_its_own_pseudo_labels_as_image_only():
  config = test_config.get_config('fixmatch')
  config.threshold = (0.0,)  # Accept all: recall 1, accuracy = accuracy_all.
  state, step, _ = build(config)
  _, m = step(state, synthetic_batch(config))
  out = pl_quality.summarize(jax.device_get(m))
  assert not any('/teacher/' in k for k in out)
  assert out['pl/image_only/recall'] == 1.0
  assert out['pl/image_only/accuracy'] == pytest.approx(out['pl/image_only/accuracy_all'])


def test_true_labels_reach_the_diagnostics_only():
  """Other true labels of the unlabeled batch: the same update, other quality counts.

  Shifting the labels by k = 0..9 makes each sample right for exactly one k, so the correct
  counts over the ten shifts sum to the batch size.
  """
  config = test_config.get_config('stssl_fixmatch')
  config.threshold = (0.0,)
  state, step, _ = build(config)
  batch = synthetic_batch(config)
  first, total = None, {'teacher': 0.0, 'image_only': 0.0}
  for k in range(10):
    s, m = step(state, dict(batch, ulb_label=(batch['ulb_label'] + k) % 10))
    params = jax.device_get(s.params)
    if first is None:
      first, loss = params, float(m['loss'])
    jax.tree_util.tree_map(np.testing.assert_array_equal, first, params)
    assert float(m['loss']) == loss
    for source in total:
      total[source] += float(m[f'pl_counts/{source}/correct'])
  n = len(batch['ulb_label'])
  assert total == {'teacher': n, 'image_only': n}


def test_training_loop_pools_per_class_counts_per_class():
  """The loop's interval mean keeps [C] count vectors apart, so macro precision is not the
  pooled accuracy (a regression: a mean over all entries made the two equal)."""
  a = pl_quality.flatten('teacher', pl_quality.counts(
      np.array([0, 0, 0, 1]), np.ones(4, np.float32), np.array([0, 0, 0, 0]), 2, False))
  b = pl_quality.flatten('teacher', pl_quality.counts(
      np.array([0, 0, 1, 1]), np.ones(4, np.float32), np.array([0, 0, 1, 0]), 2, False))
  out = pl_quality.summarize(train.interval_mean([a, b]))
  # Class 0: 5 proposed, 5 right; class 1: 3 proposed, 1 right. Accuracy 6 / 8.
  assert out['pl/teacher/precision'] == pytest.approx((5 / 5 + 1 / 3) / 2)
  assert out['pl/teacher/accuracy'] == pytest.approx(6 / 8)
