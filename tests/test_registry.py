"""The algorithm registry is the one owner of what a name implies (issue 12, seam 1)."""

import pathlib
import re

import pytest

from configs import bigearthnet, default, eurosat
from configs import test as test_config
from stssl_jax import algorithms
from stssl_jax.algorithms import common

ROOT = pathlib.Path(__file__).parent.parent
NAMES = algorithms.names()


def test_no_algorithm_name_is_parsed_outside_the_registry():
  """No `== 'name'`, `in ('name', ...)`, startswith/endswith of an algorithm name (or of the
  'stssl_' prefix) in the library, configs, bench or main.py."""
  words = '|'.join(sorted({n for n in NAMES} | {'stssl_'}, key=len, reverse=True))
  pattern = re.compile(
      rf"""(==|!=|\bin\s*[(\[{{]|startswith\(|endswith\()\s*['"]({words})""")
  hits = []
  for path in [ROOT / 'main.py', *ROOT.glob('stssl_jax/**/*.py'), *ROOT.glob('configs/*.py'),
               *ROOT.glob('bench/*.py'), *ROOT.glob('data_prep/*.py')]:
    if 'algorithms' in path.relative_to(ROOT).parts[:2]:
      continue
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        hits.append(f'{path.relative_to(ROOT)}:{i}: {line.strip()}')
  assert not hits, '\n'.join(hits)
  assert pattern.search("if algo == 'stssl_cdmad':")  # The pattern does find one.


@pytest.mark.parametrize('name', NAMES)
def test_every_config_takes_its_defaults_from_the_registry(name):
  a = algorithms.get(name)
  assert a.supervised == (name in ('supervised', 'st_supervised'))
  assert a.uses_meta == (name.startswith('stssl_') or name == 'st_supervised')
  # METHOD 10: EMA 0.999 for SSL, 0 for both supervised baselines; DeFixMatch lambda_u 0.5.
  ben = bigearthnet.get_config(name)
  assert ben.ema_momentum == (0.0 if a.supervised else 0.999)
  assert ben.lambda_u == (0.5 if name.endswith('defixmatch') else 1.0)
  assert test_config.get_config(name).ema_momentum == (0.0 if a.supervised else 0.9)
  if a.multilabel_only:
    with pytest.raises(ValueError, match='multi-label only'):
      eurosat.get_config(name)
  else:
    es = eurosat.get_config(f'{name},40')
    assert es.ema_momentum == (0.0 if a.supervised else 0.999)
    assert es.lambda_u == ben.lambda_u


def test_hooks_are_resolved_once_and_checked():
  h = common.hooks(algorithms.BASES['udal'])
  assert h is common.hooks(algorithms.BASES['udal'])
  assert h.student_targets is not None and h.distill_gate is None
  assert common.hooks(algorithms.BASES['freematch']).distill_gate is not None
  c = default.get_config()
  assert algorithms.get('stssl_cdmad').aux_head(c) and not algorithms.get('cdmad').aux_head(c)
  c.cdmad.bias_head = 'joint_head'
  assert not algorithms.get('stssl_cdmad').aux_head(c)
  c.cdmad.bias_head = 'nope'
  with pytest.raises(ValueError, match='cdmad.bias_head'):
    algorithms.get('stssl_cdmad').aux_head(c)
  assert algorithms.get('stssl_defixmatch').needs_lb_strong(c)
  assert algorithms.get('cdmad').needs_bias(c) and not algorithms.get('fixmatch').needs_bias(c)

  import types  # pylint: disable=g-import-not-at-top
  broken = types.ModuleType('broken_algo')
  broken.State, broken.init_state = tuple, lambda *a: ()
  with pytest.raises(TypeError, match='broken_algo lacks loss_terms, make_targets'):
    common.hooks(broken)
