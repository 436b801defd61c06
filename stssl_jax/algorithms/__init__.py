"""SSL algorithms by name: the one place that parses an algorithm name.

`stssl_X` is base algorithm X run through the one STSSL wrapper. `st_supervised` is the
supervised baseline with metadata (METHOD 2.6): the teacher branch alone, trained with the
supervised loss and evaluated with metadata. Everything derived from a name (which model,
which inputs, which defaults) is a field or method of the `Algorithm` that `get` returns;
other modules ask it instead of looking at the name.
"""

import types
from typing import NamedTuple

from stssl_jax.algorithms import (cap, cdmad, common, defixmatch, fixmatch, freematch,
                                  softmatch, supervised, udal)

BASES = {'supervised': supervised, 'fixmatch': fixmatch, 'freematch': freematch,
         'softmatch': softmatch, 'defixmatch': defixmatch, 'cap': cap, 'cdmad': cdmad,
         'udal': udal}
_STSSL, _TEACHER_ONLY = 'stssl_', 'st_supervised'
MULTILABEL_ONLY = ('cap',)  # Released for multi-label BigEarthNet only.


class Algorithm(NamedTuple):
  """A resolved algorithm name.

  name: as given. base_name: the base algorithm's key in BASES. base: its module
  (`common.BaseAlgorithm`). stssl: teacher (image + metadata) and student (image only).
  teacher_only: st_supervised, the teacher branch alone. hooks: the base's optional
  protocol parts, resolved once (`common.hooks`).
  """
  name: str
  base_name: str
  base: types.ModuleType
  stssl: bool
  teacher_only: bool
  hooks: common.Hooks

  @property
  def uses_unlabeled(self) -> bool:
    return self.hooks.uses_unlabeled

  @property
  def supervised(self) -> bool:
    """Labeled data only (supervised and st_supervised)."""
    return not self.hooks.uses_unlabeled

  @property
  def uses_meta(self) -> bool:
    """Whether the model is the STSSL wrapper (teacher with metadata)."""
    return self.stssl or self.teacher_only

  @property
  def eval_branch(self) -> str:
    """The branch that is evaluated and selected on: student, plain or teacher."""
    return 'teacher' if self.teacher_only else ('student' if self.stssl else 'plain')

  @property
  def train_branch(self) -> str:
    """The branch that makes pseudo-labels (and, outside STSSL, is trained): teacher|plain."""
    return 'teacher' if self.uses_meta else 'plain'

  @property
  def multilabel_only(self) -> bool:
    return self.base_name in MULTILABEL_ONLY

  @property
  def lambda_u(self) -> float:
    """Released weight of the unlabeled term (METHOD 10)."""
    return self.hooks.lambda_u

  def ema_momentum(self, ssl: float = 0.999) -> float:
    """EMA momentum: `ssl` for SSL algorithms, 0 for the supervised baselines (METHOD 7.7)."""
    return 0.0 if self.supervised else ssl

  def needs(self, config) -> set:
    """Extra inputs of the base: 'weak_lb', 'lb_strong' (`common.BaseAlgorithm`)."""
    return set(self.hooks.needs(config))

  def needs_lb_strong(self, config) -> bool:
    """The batch carries strongly augmented labeled views (DeFixMatch)."""
    return 'lb_strong' in self.needs(config)

  def extra_inputs(self, forward, like, config) -> dict:
    """Extras fields from extra pseudo-labeller forwards (CDMAD's bias; `common.BaseAlgorithm`)."""
    return dict(self.hooks.extra_inputs(forward, like, config))

  def eval_logits(self, logits, forward, like, config, num_updates):
    """The logits as evaluated (CDMAD debiases them; `common.BaseAlgorithm`)."""
    return self.hooks.eval_logits(logits, forward, like, config, num_updates)

  def aux_head(self, config) -> bool:
    """The STSSL teacher backbone keeps its own head (STSSL-CDMAD's released bias)."""
    return self.stssl and bool(self.hooks.aux_head(config))

  def placeholder(self, config) -> bool:
    """The STSSL student has a placeholder token (distillation is on)."""
    return self.stssl and config.distill != 'none' and config.lambda_d > 0


def names() -> list:
  """Every accepted algorithm name."""
  return (sorted(BASES) + [_TEACHER_ONLY]
          + sorted(_STSSL + b for b in BASES if b != 'supervised'))


def get(name: str) -> Algorithm:
  """Resolves 'fixmatch', 'stssl_fixmatch', 'supervised', 'st_supervised', ... to an Algorithm."""
  if name == _TEACHER_ONLY:
    return Algorithm(name, 'supervised', supervised, False, True, common.hooks(supervised))
  stssl = name.startswith(_STSSL)
  base = name[len(_STSSL):] if stssl else name
  if base not in BASES:
    raise ValueError(f'unknown algorithm {name!r}; known: {", ".join(names())}')
  if stssl and base == 'supervised':
    raise ValueError(f'use algorithm "{_TEACHER_ONLY}" for the supervised baseline with '
                     'metadata')
  return Algorithm(name, base, BASES[base], stssl, False, common.hooks(BASES[base]))
