"""SSL algorithms by name. `stssl_X` is base algorithm X run through the one STSSL wrapper.

`st_supervised` is the supervised baseline with metadata (METHOD 2.6): the teacher branch
alone, trained with the supervised loss and evaluated with metadata.
"""

from typing import Any, NamedTuple

from stssl_jax.algorithms import (cap, cdmad, defixmatch, fixmatch, freematch, softmatch,
                                  supervised, udal)

BASES = {'supervised': supervised, 'fixmatch': fixmatch, 'freematch': freematch,
         'softmatch': softmatch, 'defixmatch': defixmatch, 'cap': cap, 'cdmad': cdmad,
         'udal': udal}


class Algorithm(NamedTuple):
  name: str
  base: Any  # Module following the protocol in fixmatch.py.
  stssl: bool  # Teacher (image + metadata) and student (image only).
  teacher_only: bool = False  # st_supervised: the teacher branch alone.

  @property
  def uses_unlabeled(self) -> bool:
    return getattr(self.base, 'USES_UNLABELED', True)

  @property
  def uses_meta(self) -> bool:
    """Whether the model is the STSSL wrapper (teacher with metadata)."""
    return self.stssl or self.teacher_only

  @property
  def eval_branch(self) -> str:
    """The branch that is evaluated and selected on: student, plain or teacher."""
    return 'teacher' if self.teacher_only else ('student' if self.stssl else 'plain')

  def needs(self, config) -> set:
    """Extra inputs of the base: 'weak_lb', 'bias', 'lb_strong' (protocol, fixmatch.py)."""
    return set(self.base.needs(config)) if hasattr(self.base, 'needs') else set()


def names() -> list:
  """Every accepted algorithm name."""
  return (sorted(BASES) + ['st_supervised']
          + sorted('stssl_' + b for b in BASES if b != 'supervised'))


def get(name: str) -> Algorithm:
  """Resolves 'fixmatch', 'stssl_fixmatch', 'supervised', 'st_supervised', ... to an Algorithm."""
  if name == 'st_supervised':
    return Algorithm(name, supervised, stssl=False, teacher_only=True)
  stssl = name.startswith('stssl_')
  base = name[len('stssl_'):] if stssl else name
  if base not in BASES:
    raise ValueError(f'unknown algorithm {name!r}; known: {", ".join(names())}')
  if stssl and base == 'supervised':
    raise ValueError('use algorithm "st_supervised" for the supervised baseline with metadata')
  return Algorithm(name, BASES[base], stssl)
