"""Test setup: persistent XLA compilation cache so repeated runs compile once."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

_CACHE = pathlib.Path(os.environ.get('STSSL_TEST_CACHE', pathlib.Path(__file__).parent.parent / '.jax_cache'))
jax.config.update('jax_compilation_cache_dir', str(_CACHE))
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


ROOT = pathlib.Path(__file__).parent.parent
EUROSAT_SAMPLE = ROOT / 'data' / 'eurosat_sample'


@pytest.fixture(scope='session')
def prepared(tmp_path_factory):
  """data_dir of the bundled EuroSAT sample, prepared once through the real CLI."""
  out = tmp_path_factory.mktemp('prepared') / 'eurosat_sample'
  subprocess.run([sys.executable, '-m', 'data_prep.eurosat', '--images',
                  str(EUROSAT_SAMPLE / '2750'), '--coords', str(EUROSAT_SAMPLE / 'coords.csv'),
                  '--out', str(out)], check=True, cwd=ROOT, capture_output=True, timeout=600)
  return str(out)
