"""TrainState: everything a step reads and writes, as one pytree (checkpointed whole)."""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


def _finite_marker():
  return jnp.full((), -1, jnp.int32)


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar, number of updates done. params / ema_params: model pytrees.
  opt_state: optax state. algo_state: the SSL algorithm's NamedTuple. rng: base PRNG key
  (the per-step key is `fold_in(rng, step)`, so resuming needs no RNG bookkeeping).
  first_nonfinite: int32 scalar, -1 while the loss and params have stayed finite, else the
  number of the first update after which either was not (sticky; tracked on device every
  step so that no host sync is needed to know it, and read before every save)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  algo_state: Any
  rng: jax.Array
  first_nonfinite: jax.Array = dataclasses.field(default_factory=_finite_marker)
