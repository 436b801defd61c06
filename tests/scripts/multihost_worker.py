"""One process of a multi-process CPU run (used by tests/test_multihost.py).

  python multihost_worker.py PROCESS_ID NUM_PROCESSES PORT DEVICES WORKDIR DATA_DIR OUT_NPZ

Trains configs/test.py for a few steps with `jax.distributed` over loopback and saves this
process's copy of the final params.
"""

import os
import sys

pid, nproc, port, ndev = (int(a) for a in sys.argv[1:5])
workdir, data_dir, out = sys.argv[5:8]
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={ndev}'
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np

if nproc > 1:
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(coordinator_address=f'127.0.0.1:{port}', num_processes=nproc,
                             process_id=pid)
from configs import test as test_config  # pylint: disable=g-import-not-at-top
from stssl_jax import train  # pylint: disable=g-import-not-at-top

assert jax.process_count() == nproc and len(jax.devices()) == nproc * ndev
config = test_config.get_config('stssl_fixmatch')
config.data.data_dir = data_dir
config.num_steps, config.checkpoint_every, config.eval_every, config.log_every = 3, 3, 3, 3
config.warmup_steps = 0
# One encoder block and no teacher evaluation: three processes compile on two cores, and
# what is tested (collectives, sharded input, process-0 logging) does not need depth.
config.model.depth, config.eval_teacher = 1, False
result, state = train.train_and_evaluate(config, workdir, return_state=True)
# This process's local copy of the (replicated) final params.
flat = {jax.tree_util.keystr(p): np.asarray(v.addressable_data(0)) for p, v in
        jax.tree_util.tree_leaves_with_path(state.params)}
np.savez(out, top1=result['student/top1'], **flat)
print('DONE', pid, result['student/top1'])
