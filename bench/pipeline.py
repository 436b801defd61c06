"""Input-pipeline throughput against the train step's consumption, measured in one run.

  python bench/pipeline.py --data_dir=prepared/eurosat_sample
  python bench/pipeline.py --data_dir=prepared/eurosat --workers=0,1,2 --batches=200

For each worker count it times `pipeline.train_iterator` (labeled weak view + unlabeled weak
and strong views, from the ArrayRecord shards) and reports images/s, where one training
image is one labeled view or one unlabeled weak+strong pair, as the step consumes them. It
then times the jitted train step of the same config on synthetic batches (bench/step.py) and
prints pipeline/step ratios: above 1 means the step, not the data, is the bottleneck.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top

from bench import step as step_bench  # pylint: disable=g-import-not-at-top
from configs import eurosat  # pylint: disable=g-import-not-at-top
from stssl_jax.data import pipeline  # pylint: disable=g-import-not-at-top


def pipeline_rate(config, workers: int, batches: int) -> float:
  config = config.copy_and_resolve_references()
  config.data.num_workers = workers
  it = pipeline.train_iterator(config)
  for _ in range(3):  # Start-up (worker processes, caches) is not throughput.
    next(it)
  t = time.perf_counter()
  for _ in range(batches):
    next(it)
  dt = time.perf_counter() - t
  return batches * config.batch_size * (1 + config.uratio) / dt


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', default='stssl_fixmatch,40', help='configs/eurosat.py arg')
  ap.add_argument('--data_dir', default='prepared/eurosat_sample')
  ap.add_argument('--workers', default='0,1,2')
  ap.add_argument('--batches', type=int, default=100)
  ap.add_argument('--variant', default=None, help='Model for the step timing (default: config).')
  ap.add_argument('--step_steps', type=int, default=2)
  args = ap.parse_args()
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  config = eurosat.get_config(args.config)
  config.data.data_dir = args.data_dir
  rates = {w: pipeline_rate(config, w, args.batches) for w in map(int, args.workers.split(','))}
  step_cfg = config.copy_and_resolve_references()
  if args.variant:
    step_cfg.model.variant = args.variant
  step = step_bench.measure(step_cfg, args.step_steps)
  print(f'train step ({step_cfg.model.variant} @ {config.data.image_size}px, '
        f'B_l={config.batch_size}, B_u={config.batch_size * config.uratio}): '
        f'{step["images_per_s"]:.1f} img/s ({step["step_s"]:.3f} s/step)')
  print(f'{"workers":>8}{"img/s":>10}{"img/s/worker":>14}{"x step":>10}{"x 0 workers":>13}')
  for w, r in rates.items():
    per = r / max(w, 1)
    print(f'{w:>8}{r:>10.1f}{per:>14.1f}{r / step["images_per_s"]:>10.1f}{r / rates[min(rates)]:>13.2f}')


if __name__ == '__main__':
  main()
