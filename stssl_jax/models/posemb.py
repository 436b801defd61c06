"""Resizing a pretrained position-embedding grid with PyTorch's bicubic kernel (METHOD 2.2).

`jax.image.resize` uses the Keys kernel with A = -0.5 and antialiases when downsampling;
timm/USB resize with `F.interpolate(mode='bicubic', align_corners=False)`: A = -0.75, no
antialiasing, border-replicated taps. This is that, in NumPy, once at load time.
"""

import numpy as np

_A = -0.75


def _cubic_weights(t):
  """The 4 tap weights for fractional offsets t [n] -> [n, 4] (PyTorch's A = -0.75)."""
  def near(x):  # |x| <= 1
    return ((_A + 2) * x - (_A + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((_A * x - 5 * _A) * x + 8 * _A) * x - 4 * _A
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix of bicubic interpolation along one axis (align_corners=False)."""
  scale = n_in / n_out
  # Unlike the linear modes, the cubic source index is not clamped at 0 before flooring.
  src = (np.arange(n_out) + 0.5) * scale - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base)
  m = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(int) - 1 + tap, 0, n_in - 1)  # Border replication.
    np.add.at(m, (np.arange(n_out), idx), w[:, tap])
  return m


def resize_grid(grid: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
  """Bicubic resize of a [H, W, D] grid to [out_h, out_w, D] (float64 maths)."""
  h, w, _ = grid.shape
  mh, mw = _resize_matrix(h, out_hw[0]), _resize_matrix(w, out_hw[1])
  out = np.einsum('oh,hwd->owd', mh, grid.astype(np.float64))
  return np.einsum('pw,owd->opd', mw, out)


def resize_pos_embed(pos: np.ndarray, num_patches: int, num_prefix: int = 1) -> np.ndarray:
  """Resizes a timm `pos_embed` [1, prefix + g*g, D] to `num_patches` square grid entries.

  The prefix (cls) rows are kept as they are. Returns the input unchanged when the grid
  already matches (EuroSAT: 16x16 -> 16x16).
  """
  prefix, grid = pos[:, :num_prefix], pos[0, num_prefix:]
  g_in, g_out = int(round(np.sqrt(grid.shape[0]))), int(round(np.sqrt(num_patches)))
  if g_in * g_in != grid.shape[0] or g_out * g_out != num_patches:
    raise ValueError(f'pos_embed grid is not square: {grid.shape[0]} -> {num_patches} patches')
  if g_in == g_out:
    return pos
  new = resize_grid(grid.reshape(g_in, g_in, -1), (g_out, g_out)).reshape(1, g_out * g_out, -1)
  return np.concatenate([prefix, new.astype(pos.dtype)], axis=1)
