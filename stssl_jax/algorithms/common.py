"""Shared SSL maths (METHOD 4), written once for single-label and multi-label.

Shapes: `B` rows, `C` classes. Single-label labels/pseudo-labels are int [B]; multi-label
ones are multi-hot float [B, C]. Masks are [B] (single-label) or [B, C] (multi-label).
"""

from typing import Sequence, Union

import jax
import jax.numpy as jnp
import optax

Threshold = Union[float, Sequence[float]]


def probs(logits, multilabel: bool):
  """softmax (single-label) or element-wise sigmoid (multi-label) of logits [B, C]."""
  return jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits, axis=-1)


def hard_labels(logits, multilabel: bool):
  """Hard pseudo-labels: argmax int32 [B], or multi-hot `1[z >= 0]` [B, C] in logits' dtype."""
  if multilabel:
    return (logits >= 0).astype(logits.dtype)
  return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def fixed_mask(p, threshold: Threshold, multilabel: bool):
  """FixMatch-type confidence mask (inclusive comparisons, fixture quirk Q14).

  Args:
    p: probabilities [B, C].
    threshold: scalar tau; for multi-label also a pair (tau_neg, tau_pos).
    multilabel: task type.
  Returns:
    Float mask in p's dtype: [B] single-label (`max_c p >= tau`), [B, C] multi-label
    (`max(p, 1-p) >= tau`, or `p <= tau_neg or p >= tau_pos` for a pair).
  """
  if not multilabel:
    if not isinstance(threshold, (int, float)):
      raise ValueError(f'single-label threshold must be a scalar, got {threshold!r}')
    return (jnp.max(p, axis=-1) >= threshold).astype(p.dtype)
  if isinstance(threshold, (int, float)):
    return (jnp.maximum(p, 1 - p) >= threshold).astype(p.dtype)
  neg, pos = threshold
  return ((p <= neg) | (p >= pos)).astype(p.dtype)


def elementwise_loss(logits, targets, multilabel: bool):
  """Per-row CE [B] (int or soft targets) or per-entry BCE-with-logits [B, C]."""
  if multilabel:
    return optax.sigmoid_binary_cross_entropy(logits, targets.astype(logits.dtype))
  if jnp.issubdtype(targets.dtype, jnp.integer):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return optax.softmax_cross_entropy(logits, targets)


def sup_loss(logits, labels, multilabel: bool):
  """Supervised loss: mean CE over B, or BCE averaged over all B*C entries. Scalar."""
  return jnp.mean(elementwise_loss(logits, labels, multilabel))


def consistency_loss(logits, targets, weight, multilabel: bool):
  """Masked consistency `mean(weight * loss)` over all B (or B*C) entries (METHOD 4).

  The denominator counts masked entries as zeros, as in the original.

  Args:
    logits: strong-view logits [B, C].
    targets: int [B], soft [B, C] or multi-hot [B, C] pseudo-labels.
    weight: mask or real-valued weight, [B] or [B, C].
    multilabel: task type.
  Returns:
    Scalar loss.
  """
  return jnp.mean(elementwise_loss(logits, targets, multilabel) * weight)


def distill_loss(h_student, h_teacher, kind: str):
  """Feature distillation against stop-gradient teacher features (METHOD 5).

  Args:
    h_student: [R, D] student placeholder-token features.
    h_teacher: [R, D] teacher metadata-token features (gradient is stopped here).
    kind: 'mse' | 'mae' | 'cos' | 'none'.
  Returns:
    Scalar loss.
  """
  h_teacher = jax.lax.stop_gradient(h_teacher)
  if kind == 'mse':
    return jnp.mean(jnp.square(h_student - h_teacher))
  if kind == 'mae':
    return jnp.mean(jnp.abs(h_student - h_teacher))
  if kind == 'cos':
    # torch.nn.functional.cosine_similarity clamps each norm at eps = 1e-8.
    ns = jnp.maximum(jnp.linalg.norm(h_student, axis=-1), 1e-8)
    nt = jnp.maximum(jnp.linalg.norm(h_teacher, axis=-1), 1e-8)
    return -jnp.mean(jnp.sum(h_student * h_teacher, axis=-1) / (ns * nt))
  if kind == 'none':
    return jnp.zeros((), h_student.dtype)
  raise ValueError(f'unknown distillation loss {kind!r}; expected mse, mae, cos or none')
