"""TrainState: everything a step reads and writes, as one pytree (checkpointed whole)."""

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  """step: int32 scalar, number of updates done. params / ema_params: model pytrees.
  opt_state: optax state. algo_state: the SSL algorithm's NamedTuple. rng: base PRNG key
  (the per-step key is `fold_in(rng, step)`, so resuming needs no RNG bookkeeping)."""
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  algo_state: Any
  rng: jax.Array
