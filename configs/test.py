"""Tiny CPU config used by the tests: 16 px images, a depth-2 width-32 ViT, a few steps."""

from configs import default
from stssl_jax import algorithms


def get_config(arg=None):
  """arg: algorithm name (default stssl_fixmatch)."""
  c = default.get_config()
  c.algorithm = arg or 'stssl_fixmatch'
  c.data.name = 'eurosat'
  c.data.data_dir = ''  # Set by the test (a tmp dir with the prepared sample).
  c.data.num_labels = 20
  c.data.image_size, c.data.crop_padding = 16, 2
  c.model.variant = 'test'
  c.model.num_classes = 10
  c.model.drop_path = 0.1
  c.threshold = (0.5,)
  c.lambda_d = 0.5
  c.batch_size, c.uratio = 8, 2
  c.num_steps, c.warmup_steps = 4, 1
  c.lr = 1e-3
  c.ema_momentum = algorithms.get(c.algorithm).ema_momentum(0.9)
  c.eval_every, c.eval_batch_size, c.patience = 1000, 32, 1000
  c.log_every, c.checkpoint_every = 2, 2
  return c
