"""The import layering of the library (README, Architecture), checked from the source."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).parent.parent


def _imports(path: pathlib.Path) -> set[str]:
  """Every module `path` imports (top level or inside functions), as dotted names."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f'{node.module}.{a.name}' for a in node.names}
  return out


def _library():
  return {str(p.relative_to(ROOT).with_suffix('')).replace('/', '.'): _imports(p)
          for p in ROOT.glob('stssl_jax/**/*.py')}


def test_no_library_module_imports_data_prep_or_upwards():
  lib = _library()
  assert len(lib) > 30
  bad = [(m, i) for m, imps in lib.items() for i in imps if i.split('.')[0] == 'data_prep']
  assert not bad, bad
  # Evaluation does not live in the trainer: nothing that evaluates imports train.
  for m in ('stssl_jax.evaluate', 'stssl_jax.shift_eval', 'stssl_jax.report'):
    assert 'stssl_jax.train' not in lib[m], m
  assert 'stssl_jax.shift_eval' not in lib['stssl_jax.report']
  # The data layer and the metadata codec stand below the models.
  for m in [m for m in lib if m.startswith('stssl_jax.data.')] + ['stssl_jax.metadata']:
    assert not any(i.startswith(('stssl_jax.models', 'flax')) for i in lib[m]), m
  # The models import no trainer, evaluator or data pipeline.
  for m in [m for m in lib if m.startswith('stssl_jax.models.')]:
    assert not any(i.startswith(('stssl_jax.train', 'stssl_jax.evaluate', 'stssl_jax.data'))
                   for i in lib[m]), m
