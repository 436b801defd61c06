"""Train-step speed: images/s, FLOPs per step, MFU against a same-run matmul peak, memory.

  python bench/step.py                       # paper EuroSAT model and batch (ViT-S/2 @ 32 px)
  python bench/step.py --config=configs/eurosat.py:stssl_fixmatch,40 --steps=3
  python bench/step.py --variant=Ti/2 --steps=5   # a smaller model for a quick look

For the STSSL config and the plain FixMatch baseline of the same model and batch it prints:
the compiled step's FLOPs (XLA cost_analysis) next to the analytic count of what we compute
and of what the PyTorch original computes (METHOD 5: teacher fwd+bwd on [x_l; x_w; x_s],
student fwd+bwd on [x_l; x_s]), images/s, achieved FLOP/s, MFU = achieved / (float32
matmul rate measured with jax in the same run), and peak memory from the compiled memory
analysis. Only ratios within one run are meaningful on a shared machine.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags  # pylint: disable=unused-import

from stssl_jax import algorithms, evaluate, steps, train
from stssl_jax.models import stssl as models, vit


def vit_forward_flops(variant: str, image: int, extra_tokens: int) -> float:
  """Multiply-adds x 2 of one ViT forward on one image (attention + MLP + patch embed)."""
  v = vit.get_variant(variant)
  d, p = v['width'], v['patch']
  n_patch = (image // p) ** 2
  n = n_patch + 1 + extra_tokens
  per_block = 2 * n * d * 3 * d + 2 * 2 * n * n * d + 2 * n * d * d + 2 * 2 * n * d * v['mlp_dim']
  return v['depth'] * per_block + 2 * n_patch * p * p * 3 * d


def analytic(config) -> dict:
  """Analytic FLOPs per step: ours (weak forward outside the gradient) and the original's."""
  b_l, b_u, s = config.batch_size, config.batch_size * config.uratio, config.data.image_size
  stssl = algorithms.get(config.algorithm).stssl
  f_t = vit_forward_flops(vit.variant_of(config.model), s, 1 if stssl else 0)
  if not stssl:
    return {'ours': f_t * (b_u + 3 * (b_l + b_u)), 'original': 3 * f_t * (b_l + 2 * b_u)}
  f_s = vit_forward_flops(vit.variant_of(config.model), s, 1 if config.distill != 'none' else 0)
  ours = f_t * b_u + 3 * f_t * (b_l + b_u) + 3 * f_s * (b_l + b_u)
  original = 3 * f_t * (b_l + 2 * b_u) + 3 * f_s * (b_l + b_u)
  return {'ours': ours, 'original': original}


def matmul_peak(n=2048, reps=10) -> float:
  """Best float32 matmul FLOP/s over `reps` runs of an n x n x n product."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  best = float('inf')
  for _ in range(reps):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def batch_for(config):
  r = np.random.default_rng(0)
  s, b_l = config.data.image_size, config.batch_size
  b_u, c = b_l * config.uratio, config.data.num_channels
  img = lambda n: r.uniform(-1, 1, (n, s, s, c)).astype(np.float32)
  return {'lb_image': img(b_l), 'lb_label': r.integers(0, 10, b_l).astype(np.int32),
          'lb_meta': r.uniform(-1, 1, (b_l, 4)).astype(np.float32), 'ulb_image_weak': img(b_u),
          'ulb_image_strong': img(b_u), 'ulb_meta': r.uniform(-1, 1, (b_u, 4)).astype(np.float32),
          'ulb_label': r.integers(0, 10, b_u).astype(np.int32)}


def measure(config, timed_steps: int) -> dict:
  mesh = evaluate.make_mesh()
  algo = algorithms.get(config.algorithm)
  model = models.build_model(config)
  state, tx, _ = train.create_state(config, model, algo, jax.random.PRNGKey(0), mesh)
  fn = steps.make_train_step(model=model, algo=algo, config=config, tx=tx)
  batch = batch_for(config)
  t0 = time.perf_counter()
  compiled = jax.jit(fn, donate_argnums=(0,)).lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  state, m = compiled(state, batch)  # Warm-up.
  jax.block_until_ready(m)
  times = []
  for _ in range(timed_steps):
    t = time.perf_counter()
    state, m = compiled(state, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
  step_s = float(np.median(times))
  images = config.batch_size * (1 + config.uratio)
  peak_bytes = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
                - mem.alias_size_in_bytes)
  return {'flops': float(cost['flops']), 'step_s': step_s, 'images_per_s': images / step_s,
          'compile_s': compile_s, 'peak_mib': peak_bytes / 2 ** 20, **analytic(config)}


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--config', default='configs/eurosat.py:stssl_fixmatch,40')
  ap.add_argument('--variant', default=None, help='Override config.model.variant.')
  ap.add_argument('--dtype', default=None, help='Override config.dtype (e.g. bfloat16).')
  ap.add_argument('--steps', type=int, default=3, help='Timed steps (median is reported).')
  args = ap.parse_args()
  path, _, arg = args.config.partition(':')
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('bench_cfg', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  base = mod.get_config(arg or None)
  if args.variant:
    base.model.variant = args.variant
  if args.dtype:
    base.dtype = args.dtype
  peak = matmul_peak()
  print(f'devices: {jax.devices()}  matmul peak (float32, 2048^3, best of 10): '
        f'{peak / 1e9:.1f} GFLOP/s')
  rows = {}
  for name in (base.algorithm, 'fixmatch'):
    cfg = base.copy_and_resolve_references()
    cfg.algorithm = name
    rows[name] = measure(cfg, args.steps)
  peak_after = matmul_peak()
  peak = max(peak, peak_after)
  hdr = (f'{"algorithm":<16}{"GFLOP/step":>12}{"analytic":>10}{"original":>10}{"ours/orig":>10}'
         f'{"step s":>9}{"img/s":>8}{"GFLOP/s":>9}{"MFU":>7}{"peak MiB":>10}')
  print(hdr)
  print('-' * len(hdr))
  for name, r in rows.items():
    achieved = r['flops'] / r['step_s']
    print(f'{name:<16}{r["flops"] / 1e9:>12.1f}{r["ours"] / 1e9:>10.1f}{r["original"] / 1e9:>10.1f}'
          f'{r["flops"] / r["original"]:>10.3f}{r["step_s"]:>9.3f}{r["images_per_s"]:>8.1f}'
          f'{achieved / 1e9:>9.1f}{achieved / peak:>7.2f}{r["peak_mib"]:>10.1f}')
  print(f'matmul peak (max of before/after): {peak / 1e9:.1f} GFLOP/s; model {base.model.variant} '
        f'@ {base.data.image_size}px, B_l={base.batch_size}, B_u={base.batch_size * base.uratio}, '
        f'dtype {base.dtype}')


if __name__ == '__main__':
  main()
