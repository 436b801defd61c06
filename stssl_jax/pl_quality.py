"""Pseudo-label quality against the true labels of the unlabeled samples (diagnostics only).

Benchmark datasets know the labels of their "unlabeled" images; the records keep them
(`ulb_label`) and this module is their only reader. Nothing here reaches a loss.

The step emits additive *counts* (`counts`), so that the training loop can pool a whole
logging interval before it divides (`summarize`): a ratio of pooled counts, not a mean of
per-step ratios, which would over-weight steps that accepted few samples.

Single-label, per source (B samples, pseudo-label y, mask weight w in [0, 1], truth t):
  recall       sum(w) / B                       share of the unlabeled samples accepted
  accuracy     sum(w [y = t]) / sum(w)          accuracy of the accepted pseudo-labels
  precision    mean_c sum(w [y=c][t=c]) / sum(w [y=c])   macro over the classes that
                                                were proposed (exposes a class the
                                                pseudo-labeller over-predicts)
  accuracy_all mean([y = t])                    every pseudo-label, mask ignored
Multi-label, per class c (entries b with weight w[b, c], multi-hot y and t):
  recall_c     sum_b w / B;  accuracy_c  sum_b w [y = t] / sum_b w;
  precision_c  sum_b w y t / sum_b w y   (accepted positives that are true positives);
  accuracy_all_c mean_b [y = t];
  each logged per class and as its macro mean over the classes where it is defined.
Soft pseudo-labels count as their argmax (single-label) or as y >= 0.5 (multi-label).
"""

import numpy as np

import jax
import jax.numpy as jnp

PREFIX = 'pl_counts/'
METRICS = ('precision', 'recall', 'accuracy', 'accuracy_all')


def _hard(label, multilabel):
  """Hard pseudo-labels: int [B] (single-label) or {0, 1} float [B, C] (multi-label)."""
  if multilabel:
    return (label >= 0.5).astype(jnp.float32)
  if jnp.issubdtype(label.dtype, jnp.integer):
    return label
  return jnp.argmax(label, axis=-1)  # Soft targets [B, C].


def counts(label, weight, true, num_classes: int, multilabel: bool) -> dict:
  """Additive counts of one batch of pseudo-labels.

  Args:
    label: pseudo-labels, int [B] or probabilities [B, C] (single-label), [B, C] multi-hot
      or probabilities (multi-label).
    weight: mask [B] (single-label) or [B, C] (multi-label), soft weights allowed.
    true: true labels, int [B] or multi-hot [B, C].
    num_classes: C.
    multilabel: which of the two.
  Returns:
    dict of float32 counts: n scalar; accepted, correct_accepted, correct scalars
    (single-label) or [C] (multi-label); pos_accepted, tp [C].
  """
  y = _hard(label, multilabel)
  w = weight.astype(jnp.float32)
  n = jnp.asarray(y.shape[0], jnp.float32)
  if multilabel:
    t = (true >= 0.5).astype(jnp.float32)
    ok = (y == t).astype(jnp.float32)
    return {'n': n, 'accepted': w.sum(0), 'correct_accepted': (w * ok).sum(0),
            'correct': ok.sum(0), 'pos_accepted': (w * y).sum(0), 'tp': (w * y * t).sum(0)}
  ok = (y == true).astype(jnp.float32)
  onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32) * w[:, None]
  return {'n': n, 'accepted': w.sum(), 'correct_accepted': (w * ok).sum(),
          'correct': ok.sum(), 'pos_accepted': onehot.sum(0),
          'tp': (onehot * ok[:, None]).sum(0)}


def flatten(source: str, c: dict) -> dict:
  """Step-metric entries `pl_counts/<source>/<count>` for `counts` of one source."""
  return {f'{PREFIX}{source}/{k}': v for k, v in c.items()}


def _ratio(num, den):
  """num / den where den > 0, NaN elsewhere (undefined, not zero)."""
  num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _macro(values):
  values = np.asarray(values, np.float64)
  finite = values[np.isfinite(values)]
  return float(finite.mean()) if finite.size else float('nan')


def summarize(metrics: dict) -> dict:
  """Replaces the `pl_counts/...` entries of pooled step metrics by quality ratios.

  Args:
    metrics: host dict; `pl_counts/<source>/<count>` entries are pooled counts (sums or
      means over an interval: the ratios are the same).
  Returns:
    a new dict without the counts, with scalars `pl/<source>/<metric>` (macro means for
    multi-label) and, for multi-label, `pl_class/<source>/<metric>/<c>` per class.
    Undefined ratios (nothing accepted) are NaN.
  """
  out, by_source = {}, {}
  for k, v in metrics.items():
    if k.startswith(PREFIX):
      source, name = k[len(PREFIX):].rsplit('/', 1)
      by_source.setdefault(source, {})[name] = np.asarray(v)
    else:
      out[k] = v
  for source, c in by_source.items():
    per_class_precision = _ratio(c['tp'], c['pos_accepted'])
    values = {'precision': per_class_precision,
              'recall': _ratio(c['accepted'], c['n']),
              'accuracy': _ratio(c['correct_accepted'], c['accepted']),
              'accuracy_all': _ratio(c['correct'], c['n'])}
    multilabel = np.ndim(c['accepted']) == 1
    for metric in METRICS:
      v = values[metric]
      if multilabel:
        for i, x in enumerate(np.atleast_1d(v)):
          out[f'pl_class/{source}/{metric}/{i:02d}'] = float(x)
        out[f'pl/{source}/{metric}'] = _macro(v)
      else:
        out[f'pl/{source}/{metric}'] = _macro(v) if metric == 'precision' else float(v)
  return out
