"""Multi-label evaluation metrics (METHOD 9), computed on the host over a whole split.

AP needs every score of a class, so evaluation gathers the (unpadded) logits and labels and
calls `summarize(logits [N, C], labels [N, C])`. Conventions follow scikit-learn as the
original calls it (`average_precision_score` and `f1_score` with `average='macro'/'micro'`):
- AP is the step-wise sum over distinct score thresholds, `sum_n (R_n - R_{n-1}) P_n`, not
  the interpolated one. A class without positives has AP 0 and still counts in the macro mean
  (sklearn's behaviour with default arguments).
- F1 predictions use `logit > f1_threshold`, by default 0.5 on the **logit** (the original's
  behaviour, equal to prob > 0.6225). `prob > 0.5` is also reported as `*_f1_prob05`.
- Zero division gives 0, so a class never present and never predicted has F1 0.
"""

import numpy as np


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
  """Step-wise average precision of one class.

  Args:
    scores: [N] real scores (higher means more likely positive).
    labels: [N] {0, 1}.
  Returns:
    AP in [0, 1]; 0 when there is no positive.
  """
  labels = np.asarray(labels, np.float64)
  n_pos = labels.sum()
  if n_pos == 0:
    return 0.0
  order = np.argsort(-np.asarray(scores, np.float64), kind='mergesort')
  s, y = np.asarray(scores)[order], labels[order]
  # Tied scores form one threshold: keep the last index of each run of equal scores.
  last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
  tp = np.cumsum(y)[last]
  fp = (last + 1) - tp
  precision = tp / (tp + fp)
  recall = tp / n_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def _f1(pred: np.ndarray, labels: np.ndarray):
  tp = np.sum(pred * labels, axis=0)
  fp = np.sum(pred * (1 - labels), axis=0)
  fn = np.sum((1 - pred) * labels, axis=0)
  den = 2 * tp + fp + fn
  per_class = np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)
  micro_den = 2 * tp.sum() + fp.sum() + fn.sum()
  micro = 2 * tp.sum() / micro_den if micro_den > 0 else 0.0
  return float(per_class.mean()), float(micro)


def summarize(logits: np.ndarray, labels: np.ndarray, f1_threshold: float = 0.5) -> dict:
  """Macro/micro mAP, macro/micro F1 and mean BCE of a split.

  Args:
    logits: [N, C] multi-label logits.
    labels: [N, C] multi-hot ground truth.
    f1_threshold: F1 predictions are `logit > f1_threshold` (METHOD 9 quirk: 0.5).
  Returns:
    dict of floats (`macro_map`, `micro_map`, `macro_f1`, `micro_f1`, `macro_f1_prob05`,
    `micro_f1_prob05`, `loss`) and `per_class_ap` [C].
  """
  logits = np.asarray(logits, np.float64)
  labels = np.asarray(labels, np.float64)
  probs = 1.0 / (1.0 + np.exp(-logits))  # AP of sigmoid(logits), as the original ranks.
  per_class = np.array([average_precision(probs[:, c], labels[:, c])
                        for c in range(logits.shape[1])])
  macro_f1, micro_f1 = _f1((logits > f1_threshold).astype(np.float64), labels)
  macro_f1_p, micro_f1_p = _f1((logits > 0).astype(np.float64), labels)
  bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
  return {'macro_map': float(per_class.mean()),
          'micro_map': average_precision(probs.ravel(), labels.ravel()),
          'macro_f1': macro_f1, 'micro_f1': micro_f1,
          'macro_f1_prob05': macro_f1_p, 'micro_f1_prob05': micro_f1_p,
          'loss': float(bce.mean()), 'per_class_ap': per_class}
