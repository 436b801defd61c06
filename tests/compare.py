"""Comparing params of two runs that differ only in how the batch was split over devices.

The key bias of attention (the middle third of each fused qkv bias) has an exactly-zero
gradient: softmax ignores a constant added to every key score. In float32 its "gradient" is
rounding noise whose sign depends on the reduction order across devices, and Adam scales that
noise to about +-lr per step. It is checked against that bound; everything else must agree
to `atol`.
"""

import numpy as np


def assert_params_close(a: dict, b: dict, atol: float, lr: float, steps: int, what=''):
  """a, b: {param path: array}. Returns (max diff outside key biases, max key-bias diff)."""
  assert set(a) == set(b), (sorted(set(a) ^ set(b)))
  worst, kbias = 0.0, 0.0
  for k in a:
    d = np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k], np.float64))
    if k.endswith("['qkv']['bias']"):
      w = d.shape[0] // 3
      kbias = max(kbias, float(d[w:2 * w].max()))
      d = np.concatenate([d[:w], d[2 * w:]])
    assert d.max() <= atol, f'{what} {k}: max |diff| {d.max():.3g} > {atol}'
    worst = max(worst, float(d.max()))
  assert kbias <= 2 * lr * steps, f'{what} key-bias drift {kbias} > 2 * lr * steps'
  return worst, kbias
