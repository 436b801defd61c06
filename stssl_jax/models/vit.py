"""Vision Transformer encoder with an optional extra token (METHOD 2.1).

The layout follows the original timm-style ViT closely enough that a PyTorch state dict maps
onto these params with transposes only (see `convert.py`):

  tokens = [cls ; patches] + pos_embed        # [B, N+1, D]
  tokens = [tokens ; extra_token]             # optional, appended AFTER the position embedding
  tokens = blocks(tokens)                     # pre-norm, LayerNorm eps 1e-6, exact GELU
  tokens = norm(tokens)                       # final LayerNorm on every token

Params are created in float32 (`param_dtype`); `dtype` is the compute dtype. With `dtype=None`
the computation follows the inputs and params, so float64 params and inputs (parity tests under
`jax_enable_x64`) run in float64 end to end.
"""

import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

LN_EPS = 1e-6

# name -> dict(patch, width, depth, heads, mlp_dim). Ti/S/B follow the usual ViT widths.
_WIDTHS = {'Ti': (192, 3), 'S': (384, 6), 'B': (768, 12)}
VARIANTS = {
    f'{size}/{patch}': dict(patch=patch, width=width, depth=12, heads=heads, mlp_dim=4 * width)
    for size, (width, heads) in _WIDTHS.items()
    for patch in (2, 4, 16)
}
# Small models for CPU studies (the issue-7 region hold-out run): depth 4, 32 px inputs.
VARIANTS['XS/4'] = dict(patch=4, width=96, depth=4, heads=3, mlp_dim=384)
VARIANTS['XXS/4'] = dict(patch=4, width=64, depth=4, heads=2, mlp_dim=256)
# The parity fixtures' configuration (16x16 images give N = 16 patches).
VARIANTS['test'] = dict(patch=4, width=32, depth=2, heads=2, mlp_dim=128)


DIMS = ('patch', 'width', 'depth', 'heads', 'mlp_dim')
_SPEC = re.compile(r'^p(\d+)-w(\d+)-d(\d+)-h(\d+)-m(\d+)$')


def spec_name(dims: dict) -> str:
  """'p4-w32-d2-h2-m128': a variant name that is its own definition (no registration)."""
  return 'p{patch}-w{width}-d{depth}-h{heads}-m{mlp_dim}'.format(**dims)


def get_variant(name: str) -> dict:
  """Returns a copy of the variant `name`: registered (e.g. 'S/2') or explicit ('p4-w32-...').

  Raises:
    KeyError: `name` is neither; the message lists the registered names.
  """
  match = _SPEC.match(name)
  if match:
    dims = dict(zip(DIMS, (int(g) for g in match.groups())))
    if min(dims.values()) < 1 or dims['width'] % dims['heads']:
      raise KeyError(f'ViT variant {name!r}: every dim must be >= 1 and width divisible by '
                     'heads')
    return dims
  if name not in VARIANTS:
    raise KeyError(f'Unknown ViT variant {name!r}; registered: {sorted(VARIANTS)}, or explicit '
                   'dims: config.model.patch/width/depth/heads/mlp_dim')
  return dict(VARIANTS[name])


def variant_of(model_config) -> str:
  """The variant a `config.model` describes: `variant`, with any of `patch`, `width`, `depth`,
  `heads`, `mlp_dim` that are set (> 0) replacing the named variant's value."""
  dims = get_variant(model_config.variant)
  changed = {k: int(model_config[k]) for k in DIMS if int(model_config.get(k, 0) or 0) > 0}
  if not changed or all(dims[k] == v for k, v in changed.items()):
    return model_config.variant
  name = spec_name({**dims, **changed})
  get_variant(name)  # Validates the combination.
  return name


# PyTorch nn.Linear / nn.Conv2d default init: kaiming_uniform(a=sqrt(5)) gives a weight bound
# of sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(fan_in), i.e. variance scale 1/3 with a uniform law.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_bias_init(fan_in: int):
  """PyTorch default bias init: uniform in +-1/sqrt(fan_in) (flax passes no fan_in to biases)."""
  bound = fan_in ** -0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def torch_dense(features: int, fan_in: int, dtype: Optional[Dtype], name: str) -> nn.Dense:
  """An nn.Dense initialised like torch's nn.Linear(fan_in, features)."""
  return nn.Dense(features, dtype=dtype, kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(fan_in), name=name)


def drop_path(x: jax.Array, rate: float, rng: jax.Array) -> jax.Array:
  """Stochastic depth: zeroes whole samples with probability `rate`, rescales survivors.

  Args:
    x: [B, ...] a residual branch's output.
    rate: drop probability in [0, 1).
    rng: PRNG key.

  Returns:
    [B, ...] `x * keep / (1 - rate)` with `keep` ~ Bernoulli(1 - rate) per sample.
  """
  keep_prob = 1.0 - rate
  keep = jax.random.bernoulli(rng, keep_prob, (x.shape[0],) + (1,) * (x.ndim - 1))
  return jnp.where(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection ordered (3, heads, head_dim)."""
  heads: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, L, D]. Returns: [B, L, D]."""
    b, l, d = x.shape
    hd = d // self.heads
    qkv = torch_dense(3 * d, d, self.dtype, 'qkv')(x)
    # The fused output index is which * D + head * hd + j, as in the original's
    # reshape(B, L, 3, H, hd), so the torch weight imports with a transpose only.
    # Head-major [3, B, H, L, hd] (the original's permute(2, 0, 3, 1, 4)): XLA:CPU's batched
    # dots run ~5% faster on this layout than on [B, L, H, hd] (bench/cpu_flags.py).
    qkv = qkv.reshape(b, l, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    # The scale is applied after q @ k^T, exactly as the original (matters at float64 parity).
    logits = jnp.einsum('bhqd,bhkd->bhqk', q, k) * jnp.asarray(hd ** -0.5, q.dtype)
    # Softmax in at least float32 so a bfloat16 compute dtype stays stable.
    weights = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    out = jnp.einsum('bhqk,bhkd->bhqd', weights.astype(v.dtype), v)
    out = out.transpose(0, 2, 1, 3).reshape(b, l, d)
    return torch_dense(d, d, self.dtype, 'proj')(out)


class Mlp(nn.Module):
  """fc1 -> exact (erf) GELU -> fc2."""
  mlp_dim: int
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Args: x [B, L, D]. Returns: [B, L, D]."""
    d = x.shape[-1]
    h = torch_dense(self.mlp_dim, d, self.dtype, 'fc1')(x)
    # PyTorch's exact GELU 0.5 x (1 + erf(x / sqrt 2)); jax.nn.gelu(approximate=False) uses
    # erfc, which is ~3x slower on XLA:CPU and further from torch in float64.
    h = 0.5 * h * (1.0 + jax.lax.erf(h * jnp.asarray(2 ** -0.5, h.dtype)))
    return torch_dense(d, self.mlp_dim, self.dtype, 'fc2')(h)


def layer_norm(dtype: Optional[Dtype], name: str) -> nn.LayerNorm:
  # Two-pass variance E[(x - mean)^2], as torch computes it, rather than E[x^2] - mean^2.
  return nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, use_fast_variance=False, name=name)


class EncoderBlock(nn.Module):
  """Pre-norm transformer block with per-sample stochastic depth on both residual branches."""
  heads: int
  mlp_dim: int
  drop_rate: float = 0.0
  dtype: Optional[Dtype] = None

  def _residual(self, y: jax.Array, train: bool) -> jax.Array:
    if train and self.drop_rate > 0.0:
      return drop_path(y, self.drop_rate, self.make_rng('dropout'))
    return y

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Args: x [B, L, D]; train enables drop-path. Returns: [B, L, D]."""
    y = Attention(self.heads, self.dtype, name='attn')(layer_norm(self.dtype, 'norm1')(x))
    x = x + self._residual(y, train)
    y = Mlp(self.mlp_dim, self.dtype, name='mlp')(layer_norm(self.dtype, 'norm2')(x))
    return x + self._residual(y, train)


class ViTEncoder(nn.Module):
  """ViT encoder returning all final-LayerNorm tokens.

  Attributes:
    patch: patch side P (conv kernel = stride = P).
    width: token width D.
    depth: number of blocks.
    heads: attention heads (head dim D / heads).
    mlp_dim: MLP hidden width.
    drop_path: maximum stochastic-depth rate; block i uses drop_path * i / (depth - 1).
    dtype: compute dtype (None: follow inputs and params). Params are float32.
  """
  patch: int
  width: int
  depth: int
  heads: int
  mlp_dim: int
  drop_path: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, extra_token: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """Encodes images.

    Args:
      x: [B, H, W, C] images (NHWC), H and W multiples of `patch`.
      extra_token: optional [B, 1, D] token appended after the position embedding.
      train: enables drop-path (needs the 'dropout' rng when drop_path > 0).

    Returns:
      [B, L, D] tokens after the final LayerNorm, L = N + 1 (+ 1 with `extra_token`),
      token 0 is cls and the extra token (if any) is last.
    """
    p, d = self.patch, self.width
    x = nn.Conv(d, (p, p), strides=(p, p), padding='VALID', dtype=self.dtype,
                kernel_init=torch_kernel_init, bias_init=torch_bias_init(p * p * x.shape[-1]),
                name='patch_embed')(x)
    b, gh, gw, _ = x.shape
    x = x.reshape(b, gh * gw, d)  # Row-major over the grid: token n is row n // gw, col n % gw.
    cls = self.param('cls', nn.initializers.normal(0.02), (1, 1, d))
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (1, gh * gw + 1, d))
    x, cls, pos = nn.dtypes.promote_dtype(x, cls, pos, dtype=self.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1) + pos
    if extra_token is not None:
      x = jnp.concatenate([x, extra_token.astype(x.dtype)], axis=1)
    for i in range(self.depth):
      rate = self.drop_path * i / (self.depth - 1) if self.depth > 1 else 0.0
      x = EncoderBlock(self.heads, self.mlp_dim, rate, self.dtype, name=f'block_{i}')(x, train)
    return layer_norm(self.dtype, 'norm')(x)
