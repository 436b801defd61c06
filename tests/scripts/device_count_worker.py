"""Trains or restores with a given number of simulated CPU devices (tests/test_multihost.py).

  python device_count_worker.py DEVICES WORKDIR DATA_DIR NUM_STEPS OUT_NPZ

Runs configs/test.py to NUM_STEPS in WORKDIR (resuming whatever checkpoint is there, written
on any device count) and saves the final params with the sharding they ended up on.
"""

import os
import sys

ndev = int(sys.argv[1])
workdir, data_dir, num_steps, out = sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={ndev}'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

from configs import test as test_config  # pylint: disable=g-import-not-at-top
from stssl_jax import checkpoint, evaluate, train  # pylint: disable=g-import-not-at-top

config = test_config.get_config('stssl_fixmatch')
config.data.data_dir = data_dir
config.num_steps, config.checkpoint_every, config.eval_every, config.log_every = (
    num_steps, num_steps, num_steps, num_steps)
# One encoder block and no teacher evaluation: less to compile in each of the four workers.
config.model.depth, config.eval_teacher = 1, False
if num_steps == 0:  # Restore only: build the state on this mesh and load the latest step.
  mesh = evaluate.make_mesh()
  from stssl_jax import algorithms  # pylint: disable=g-import-not-at-top
  from stssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from stssl_jax.models import stssl as models  # pylint: disable=g-import-not-at-top
  algo = algorithms.get(config.algorithm)
  abstract, _, _ = train.create_state(config, models.build_model(config), algo,
                                      jax.random.PRNGKey(0), mesh, abstract=True)
  ckpt = checkpoint.Checkpointer(workdir)
  state, _ = ckpt.restore(abstract, pipeline.train_iterator(config))
else:
  _, state = train.train_and_evaluate(config, workdir, return_state=True)
devices = {len(x.sharding.device_set) for x in jax.tree_util.tree_leaves(state.params)}
assert devices == {ndev}, devices
flat = {jax.tree_util.keystr(p): np.asarray(v) for p, v in
        jax.tree_util.tree_leaves_with_path(jax.device_get(state))}
np.savez(out, **flat)
print('DONE', ndev, int(state.step))
