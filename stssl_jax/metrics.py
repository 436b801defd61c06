"""Single-label evaluation metrics (METHOD 9).

Evaluation batches are padded to a fixed size and carry a boolean `mask`; padded rows must
contribute nothing. The jit-able pieces accumulate sufficient statistics per batch:

  confusion += confusion_update(logits, labels, mask)   # [C, C] int32 counts
  loss_sum  += ce_sum(logits, labels, mask)             # scalar
  count     += mask.sum()

and `summarize` turns them into the reported numbers on the host.

Conventions (those of scikit-learn, which the original USB `evaluate` calls with default
arguments, so the numbers match it):
- confusion[i, j] counts samples of true class i predicted as j (rows: truth).
- A class "takes part" if it occurs in the labels or in the predictions (sklearn's
  `unique_labels(y_true, y_pred)`); macro precision/recall/F1 average over those classes only.
- Zero division gives 0 (sklearn's default outcome): a class never predicted has precision 0, a
  class without samples has recall 0, and F1 = 2 tp / (2 tp + fp + fn) is 0 when tp = fp = fn = 0.
- Balanced accuracy averages recall over the classes that occur in the labels.
- The row-normalised confusion divides each row by its count; a row without samples stays 0.
  It keeps all C rows (sklearn would drop classes absent from both labels and predictions).
"""

import jax
import jax.numpy as jnp
import numpy as np


def confusion_update(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Confusion counts of one batch.

  Args:
    logits: [B, C] scores; the prediction is the argmax.
    labels: [B] int true classes (any value on padded rows).
    mask: [B] bool, False on padded rows.

  Returns:
    [C, C] int32, entry (i, j) = number of valid rows with label i and prediction j.
  """
  num_classes = logits.shape[-1]
  preds = jnp.argmax(logits, axis=-1)
  # Padded rows may hold arbitrary labels; point them at (0, 0) and add 0 there.
  labels = jnp.where(mask, labels, 0)
  preds = jnp.where(mask, preds, 0)
  counts = jnp.zeros((num_classes, num_classes), jnp.int32)
  return counts.at[labels, preds].add(mask.astype(jnp.int32))


def ce_sum(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  """Summed softmax cross-entropy over the valid rows.

  Args:
    logits: [B, C] scores.
    labels: [B] int true classes.
    mask: [B] bool, False on padded rows.

  Returns:
    scalar, sum over valid rows of -log softmax(logits)[label] (computed in >= float32).
  """
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  labels = jnp.where(mask, labels, 0)
  logp = jax.nn.log_softmax(logits, axis=-1)
  nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
  return jnp.sum(jnp.where(mask, nll, 0.0))


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
  return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def summarize(confusion, loss_sum, count) -> dict:
  """Reported single-label metrics from accumulated statistics.

  Args:
    confusion: [C, C] counts (rows: truth, columns: prediction).
    loss_sum: summed CE over all valid samples (from `ce_sum`).
    count: number of valid samples.

  Returns:
    dict of Python floats 'top1', 'balanced_acc', 'macro_precision', 'macro_recall',
    'macro_f1', 'loss' (mean CE), and 'confusion' ([C, C] float64 numpy, row-normalised).
    Conventions are in the module docstring.
  """
  cm = np.asarray(confusion, np.float64)
  tp = np.diag(cm)
  support = cm.sum(axis=1)  # samples per true class
  predicted = cm.sum(axis=0)  # predictions per class
  present = (support > 0) | (predicted > 0)
  total = cm.sum()
  precision = _safe_div(tp, predicted)
  recall = _safe_div(tp, support)
  f1 = _safe_div(2 * tp, support + predicted)
  macro = lambda v: float(v[present].mean()) if present.any() else 0.0
  return {
      'top1': float(tp.sum() / total) if total > 0 else 0.0,
      'balanced_acc': float(recall[support > 0].mean()) if (support > 0).any() else 0.0,
      'macro_precision': macro(precision),
      'macro_recall': macro(recall),
      'macro_f1': macro(f1),
      'loss': float(loss_sum) / float(count) if float(count) > 0 else float('nan'),
      'confusion': _safe_div(cm, support[:, None] * np.ones_like(cm)),
  }
