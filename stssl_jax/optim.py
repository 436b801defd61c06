"""AdamW with the original's warm-up cosine schedule and weight-decay mask (METHOD 8)."""

import jax
import jax.numpy as jnp
import optax


def lr_schedule(base_lr: float, warmup: int, total: int, factor: float = 7 / 16):
  """Multiplier of the USB `get_cosine_schedule_with_warmup`, times `base_lr`.

  Update t (0-based) uses `t / W` during warm-up, then `max(0, cos(pi * factor * (t - W) /
  (T - W)))`. With warm-up the very first update has LR 0, as in the original.
  """
  def schedule(count):
    # The default float type: float32 normally, float64 in the x64 parity tests.
    t = jnp.asarray(count, jnp.result_type(float))
    warm = t / max(warmup, 1)
    progress = (t - warmup) / max(total - warmup, 1)
    cos = jnp.maximum(0.0, jnp.cos(jnp.pi * factor * progress))
    return base_lr * jnp.where(t < warmup, warm, cos)
  return schedule


def decay_mask(params, exclude_tokens: bool):
  """True where weight decay applies: every leaf with >= 2 dims.

  Args:
    params: param pytree.
    exclude_tokens: also exempt `cls` and `pos_embed` (the plain ViT's `no_weight_decay`).
      The STSSL wrapper in the original exposes no such list, so there they are decayed
      (METHOD 8, fixture quirk Q2).
  Returns:
    Pytree of bools with params' structure.
  """
  def keep(path, leaf):
    name = getattr(path[-1], 'key', str(path[-1]))
    if exclude_tokens and name in ('cls', 'pos_embed'):
      return False
    return leaf.ndim >= 2
  return jax.tree_util.tree_map_with_path(keep, params)


def frozen_mask(params):
  """True for leaves that are never trained: the teacher backbone's aux head (quirk Q1).

  The original never gives it a gradient, so AdamW skips it entirely, weight decay included;
  it exists only for STSSL-CDMAD's released bias (METHOD 7.5).
  """
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(getattr(k, 'key', None) == 'aux_head' for k in path), params)


def make_optimizer(config, params, stssl: bool):
  """optax AdamW (PyTorch defaults) whose decay is scaled by the current LR, no clipping.

  Args:
    config: run config (lr, warmup_steps, num_steps, cosine_factor, weight_decay, wd_quirk).
    params: param pytree (for the masks).
    stssl: whether the model is the STSSL wrapper (teacher and/or student), whose tokens are
      decayed under `wd_quirk`.
  Returns:
    (optax GradientTransformation, LR schedule).
  """
  schedule = lr_schedule(config.lr, config.warmup_steps, config.num_steps, config.cosine_factor)
  exclude = not stssl or not config.wd_quirk
  tx = optax.adamw(schedule, b1=0.9, b2=0.999, eps=1e-8, weight_decay=config.weight_decay,
                   mask=decay_mask(params, exclude_tokens=exclude))
  frozen = frozen_mask(params)
  if any(jax.tree_util.tree_leaves(frozen)):
    tx = optax.chain(tx, optax.masked(optax.set_to_zero(), frozen))
  return tx, schedule
