"""DeFixMatch end to end: the pipeline adds labeled strong views when the algorithm needs them."""

import numpy as np

from configs import test as test_config
from stssl_jax import train
from stssl_jax.data import pipeline


def test_labeled_strong_views_only_when_needed(prepared):
  config = test_config.get_config('stssl_defixmatch')
  config.data.data_dir = prepared
  batch = next(pipeline.train_iterator(config))
  assert batch['lb_image_strong'].shape == batch['lb_image'].shape
  assert not np.array_equal(batch['lb_image_strong'], batch['lb_image'])
  config.algorithm = 'stssl_fixmatch'
  assert 'lb_image_strong' not in next(pipeline.train_iterator(config))


def test_stssl_defixmatch_trains(prepared, tmp_path):
  config = test_config.get_config('stssl_defixmatch')
  config.data.data_dir = prepared
  config.num_steps, config.eval_every = 2, 2
  final = train.train_and_evaluate(config, str(tmp_path))
  assert final['step'] == 2 and np.isfinite(final['student/loss'])
