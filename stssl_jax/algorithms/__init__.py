"""SSL algorithms by name. `stssl_X` is base algorithm X run through the one STSSL wrapper."""

from typing import Any, NamedTuple

from stssl_jax.algorithms import fixmatch, supervised

BASES = {'supervised': supervised, 'fixmatch': fixmatch}


class Algorithm(NamedTuple):
  name: str
  base: Any  # Module following the protocol in fixmatch.py.
  stssl: bool  # Teacher (image + metadata) and student (image only).

  @property
  def uses_unlabeled(self) -> bool:
    return getattr(self.base, 'USES_UNLABELED', True)


def get(name: str) -> Algorithm:
  """Resolves 'fixmatch', 'stssl_fixmatch', 'supervised', ... to an Algorithm."""
  stssl = name.startswith('stssl_')
  base = name[len('stssl_'):] if stssl else name
  if base not in BASES:
    known = sorted(BASES) + sorted('stssl_' + b for b in BASES if b != 'supervised')
    raise ValueError(f'unknown algorithm {name!r}; known: {", ".join(known)}')
  if stssl and base == 'supervised':
    raise ValueError('use algorithm "st_supervised" for the supervised baseline with metadata')
  return Algorithm(name, BASES[base], stssl)
