"""The algorithm registry is the one owner of what a name implies (issue 12, seam 1)."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np
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

  # Extra forwards: CDMAD reads its bias off a blank (all-ones) image, others run none.
  seen = []
  forward = lambda x: (seen.append(x.shape) or jnp.full((x.shape[0], 3), x.mean()), {})
  like, z = jnp.zeros((5, 8, 8, 3)), jnp.arange(6.0).reshape(2, 3)
  np.testing.assert_array_equal(algorithms.get('cdmad').extra_inputs(forward, like, c)['bias'],
                                jnp.ones((1, 3)))
  assert seen == [(1, 8, 8, 3)]
  assert algorithms.get('fixmatch').extra_inputs(forward, like, c) == {}
  assert algorithms.get('fixmatch').eval_logits(z, forward, like, c, 10) is z
  assert len(seen) == 1
  c.cdmad.debias_start = 4  # Gated by the index of the last update: num_updates - 1.
  np.testing.assert_array_equal(algorithms.get('stssl_cdmad').eval_logits(z, forward, like, c, 4), z)
  np.testing.assert_array_equal(algorithms.get('stssl_cdmad').eval_logits(z, forward, like, c, 5),
                                z - 1.0)

  import types  # pylint: disable=g-import-not-at-top
  broken = types.ModuleType('broken_algo')
  broken.State, broken.init_state = tuple, lambda *a: ()
  with pytest.raises(TypeError, match='broken_algo lacks loss_terms, make_targets'):
    common.hooks(broken)


def test_explicit_vit_dims_override_the_named_variant(tmp_path):
  from stssl_jax.models import stssl as models, vit  # pylint: disable=g-import-not-at-top
  from stssl_jax import workdir  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  c = test_config.get_config('fixmatch')
  assert vit.variant_of(c.model) == 'test'
  c.model.depth, c.model.width, c.model.heads = 1, 48, 3
  name = vit.variant_of(c.model)
  assert name == 'p4-w48-d1-h3-m128' and vit.get_variant(name)['width'] == 48
  params = jax.eval_shape(lambda: models.build_model(c).init(
      jax.random.PRNGKey(0), *models.init_inputs(c))['params'])
  blocks = [k for k in params['backbone'] if k.startswith('block_')]
  assert blocks == ['block_0'] and params['head']['kernel'].shape == (48, 10)
  c.model.heads = 5
  with pytest.raises(KeyError, match='divisible by heads'):
    vit.variant_of(c.model)
  # A workdir from before these fields existed resumes: absent-and-default is no change.
  old = workdir.config_dict(test_config.get_config('fixmatch'))
  for k in vit.DIMS:
    del old['model'][k]
  (tmp_path / 'config.json').write_text(__import__('json').dumps(old))
  assert workdir.guard_config(str(tmp_path), test_config.get_config('fixmatch'), 2) == {}
  c = test_config.get_config('fixmatch')
  c.model.depth = 1
  with pytest.raises(workdir.ConfigChanged, match="model.depth: '<absent>' -> 1"):
    workdir.guard_config(str(tmp_path), c, 2)
