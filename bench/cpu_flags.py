"""XLA:CPU performance variants of the train step, measured interleaved on a shared machine.

  python bench/cpu_flags.py --suite=step --only=base,thp,thp_2dev --rounds=3 --iters=2
  python bench/cpu_flags.py --suite=block --only=base,thp,torch_sdpa --rounds=5 --iters=2
  python bench/cpu_flags.py --suite=block --only=base,ynn_off,xnn_dot,onednn_dot,nfe --rounds=4 --iters=2
  python bench/cpu_flags.py --suite=matmul --only=base,ynn_off,onednn_legacy --rounds=4 --iters=3
  python bench/cpu_flags.py --suite=block_profile:build_dots_each --only=base,ynn_off --rounds=4

Suites: `step` (the whole train step, ~10 s per S/2 step; 6 GiB temp memory while running),
`block` (one encoder block, batch 16 at the step's shapes: 'fwd' and 'fwdbwd'), `matmul`
(dense and attention dot shapes), or `module:function` from bench/ (block_profile.py has the
per-dot and PyTorch workloads). `--only` picks variants from VARIANTS (first = baseline).

Every variant runs in its own child process (XLA_FLAGS must be set before jax is imported).
All children compile first and then sit idle; the parent asks them in turn, round after round
(A B C A B C ...), to run a few timed iterations, so a load spike from another process hits
every variant alike. Only one child computes at a time. Each child also times a 2048^3
float32 matmul under its own flags whenever asked, interleaved with the rest, and MFU is
reported against the best matmul rate measured by any child in the run (the 'same-run jax
float32 matmul rate'), next to the default-flags child's own rate.

A variant is XLA_FLAGS, extra environment, a dtype or its own workload. The model-code
variants of the first CPU study (local GELU, attention-layout and softmax rewrites) were
removed once the winners landed in `models/vit.py`; their outcomes are in the README's
performance section.

Columns: `med s` median and `best s` minimum seconds per iteration over all rounds,
`GFLOP/s` XLA cost-analysis FLOPs / best time, `x base` speed relative to the first variant
(base median / variant median), `MFU` GFLOP/s over the run's best matmul rate, `cpu s` the
median process CPU seconds (all threads) per iteration and its `x base` ratio: less
sensitive than wall time to other processes taking the cores, since a descheduled thread
accrues no CPU time (spin-waiting threads do, alike in every variant). `mm GF/s` is the
child's own best 2048^3 matmul rate.
"""

import argparse
import json
import os
import select
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ----------------------------------------------------------------------------------------
# Variants: name -> dict(flags=[XLA flags], env={...}, dtype=..., suite=...).
# 'ynn' = YNNPACK (XNNPACK's successor) library fusions; in this jaxlib (0.10.2) they are on
# by default for dots (and eltwise ops next to them). '=' with an empty list turns them off.
# ----------------------------------------------------------------------------------------
YNN_OFF = '--xla_cpu_experimental_ynn_fusion_type='
# YNN for dots only (the default also pulls neighbouring eltwise/reduce ops into YNN
# fusions, e.g. the softmax's max/exp/sum next to the q.k dot).
YNN_DOT_ONLY = '--xla_cpu_experimental_ynn_fusion_type=individual_dot'
# XLA:CPU allocates each execution's temp buffers afresh; glibc serves big blocks with mmap,
# so every step page-faults all of its temp memory in 4 KiB pages (kernel zeroing + faults:
# ~20% of the block's CPU time). glibc >= 2.35 can madvise(MADV_HUGEPAGE) its mmapped chunks:
# 2 MiB pages, ~100x fewer faults. Must be in the environment when the process starts.
THP = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'}
# The legacy loop emitter splits elementwise fusions over the intra-op threads (the default
# fusion emitters run most loop fusions on one thread), but its transposes are far slower.
NFE = '--xla_cpu_use_fusion_emitters=false'
_DEV2 = '--xla_force_host_platform_device_count=2'
_DEV4 = '--xla_force_host_platform_device_count=4'
# Measured outcomes (S/2, 2 shared cores) are in the lead's report; one-line notes here.
VARIANTS = {
    'base': dict(),
    # --- XLA flags (none helped the block's fwd+bwd; several help forward-only) ---
    'ynn_off': dict(flags=[YNN_OFF]),  # Eigen dots: fwd 1.35x, fwd+bwd 0.97x
    'ynn_dot_only': dict(flags=[YNN_DOT_ONLY]),  # fwd+bwd 0.92x; full step ~0.5x
    'ynn_dot': dict(flags=['--xla_cpu_experimental_ynn_fusion_type=dot']),
    'ynn_dot_eltwise': dict(flags=['--xla_cpu_experimental_ynn_fusion_type=dot,eltwise']),
    'ynn_all': dict(flags=['--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce,'
                           'individual_dot']),  # 0.8x
    'xnn_dot': dict(flags=[YNN_OFF, '--xla_cpu_experimental_xnn_fusion_type=dot']),
    'xnn_graph': dict(flags=[YNN_OFF, '--xla_cpu_experimental_xnn_graph_fusion_mode='
                             'XNN_GRAPH_FUSION_MODE_GREEDY']),
    'onednn_dot': dict(flags=[YNN_OFF, '--xla_cpu_experimental_onednn_fusion_type=dot']),
    'onednn_legacy': dict(flags=[YNN_OFF, '--xla_cpu_use_onednn=true']),
    'onednn_elt': dict(flags=['--xla_cpu_experimental_onednn_fusion_type=eltwise']),
    'onednn_elt_red': dict(flags=['--xla_cpu_experimental_onednn_fusion_type=eltwise,reduce']),
    'no_eigen_mt': dict(flags=['--xla_cpu_multi_thread_eigen=false']),
    'vec512': dict(flags=['--xla_cpu_prefer_vector_width=512']),
    'fast_math': dict(flags=['--xla_cpu_enable_fast_math=true']),  # numerics change
    'no_concurrency_sched': dict(flags=['--xla_cpu_enable_concurrency_optimized_scheduler=false']),
    'split1': dict(flags=['--xla_cpu_parallel_codegen_split_count=1']),
    'nfe': dict(flags=[NFE]),  # 0.72x: the legacy emitter's transposes are very slow
    '2dev': dict(flags=[_DEV2]),  # block 1.08x, full step 0.56x (see report)
    # --- process environment (read by glibc at process start) ---
    'thp': dict(env=THP),  # block and step ~1.15-1.19x
    # --- precision ---
    'bf16': dict(dtype='bfloat16'),  # separate question: numerics change
    # --- combinations on top of thp ---
    'thp_dotonly': dict(env=THP, flags=[YNN_DOT_ONLY]),
    'thp_2dev': dict(env=THP, flags=[_DEV2]),
    'thp_bf16': dict(env=THP, dtype='bfloat16'),
    # --- the same block in PyTorch on this machine (block suite only; block_profile.py) ---
    'torch': dict(suite='block_profile:build_torch_block'),
    'torch_sdpa': dict(suite='block_profile:build_torch_block_sdpa'),
}

# ----------------------------------------------------------------------------------------
# Child side.
# ----------------------------------------------------------------------------------------
def _load_config(spec, variant, dtype):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(':')
  s = importlib.util.spec_from_file_location('bench_cfg', os.path.join(ROOT, path))
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  c = mod.get_config(arg or None)
  if variant:
    c.model.variant = variant
  if dtype:
    c.dtype = dtype
  return c


def _flops(compiled, partitions=1):
  """XLA's FLOP count of the whole program (SPMD cost analysis counts one partition)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost['flops']) * partitions


def build_step(opts):
  """{'step': (run_fn, flops)}: the full train step, batch sharded over the 'data' mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(ROOT, 'bench'))
  import step as step_bench  # pylint: disable=g-import-not-at-top
  from stssl_jax import algorithms, evaluate, steps, train  # pylint: disable=g-import-not-at-top
  from stssl_jax.models import stssl as models  # pylint: disable=g-import-not-at-top
  cfg = _load_config(opts['config'], opts['variant'], opts.get('dtype'))
  mesh = evaluate.make_mesh()
  algo = algorithms.get(cfg.algorithm)
  model = models.build_model(cfg)
  state, tx, _ = train.create_state(cfg, model, algo, jax.random.PRNGKey(0), mesh)
  fn = steps.make_train_step(model=model, algo=algo, config=cfg, tx=tx)
  batch = jax.device_put(step_bench.batch_for(cfg), NamedSharding(mesh, P('data')))
  compiled = jax.jit(fn, donate_argnums=(0,)).lower(state, batch).compile()
  if opts.get('dump'):
    with open(opts['dump'], 'w') as f:
      f.write(compiled.as_text())
  box = [state]

  def run():
    box[0], m = compiled(box[0], batch)
    jax.block_until_ready(m)

  info = {'analytic_original': step_bench.analytic(cfg)['original'],
          'peak_mib': compiled.memory_analysis().temp_size_in_bytes / 2 ** 20}
  return {'step': (run, _flops(compiled, len(jax.devices())))}, info


def build_block(opts):
  """One encoder block at the step's shapes: 'fwd' and 'fwdbwd' (grads of params and x)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from stssl_jax.models import vit  # pylint: disable=g-import-not-at-top
  v = vit.get_variant(opts['variant'])
  n_tok = (opts.get('image', 32) // v['patch']) ** 2 + 2
  b = opts.get('batch', 16)
  dtype = jnp.bfloat16 if opts.get('dtype') == 'bfloat16' else None
  blk = vit.EncoderBlock(v['heads'], v['mlp_dim'], 0.0, dtype)
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(k[0], (b, n_tok, v['width']), jnp.float32)
  ct = jax.random.normal(k[1], x.shape, jnp.float32)
  params = blk.init(k[2], x)['params']
  if len(jax.devices()) > 1:  # Batch split over the host devices, params replicated.
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    mesh = Mesh(np.asarray(jax.devices()), ('data',))
    x = jax.device_put(x, NamedSharding(mesh, P('data')))
    ct = jax.device_put(ct, NamedSharding(mesh, P('data')))
    params = jax.device_put(params, NamedSharding(mesh, P()))

  def loss(p, x):
    return jnp.sum(blk.apply({'params': p}, x).astype(jnp.float32) * ct)

  fwd = jax.jit(lambda p, x: blk.apply({'params': p}, x)).lower(params, x).compile()
  bwd = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
  if opts.get('dump'):
    with open(opts['dump'], 'w') as f:
      f.write(bwd.as_text())
  out = {}
  for name, c in (('fwd', fwd), ('fwdbwd', bwd)):
    out[name] = ((lambda c=c: jax.block_until_ready(c(params, x))), _flops(c, len(jax.devices())))
  return out, {}


def build_matmul(opts):
  """The dense dots of one ViT block (forward, dgrad, wgrad) at the step's shapes."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from stssl_jax.models import vit  # pylint: disable=g-import-not-at-top
  v = vit.get_variant(opts['variant'])
  n_tok = (32 // v['patch']) ** 2 + 2
  m, d, f = opts.get('batch', 16) * n_tok, v['width'], v['mlp_dim']
  hd, h, bb = d // v['heads'], v['heads'], opts.get('batch', 16)
  shapes = {  # name: (einsum, lhs shape, rhs shape)
      'qkv fwd': ('mk,kn->mn', (m, d), (d, 3 * d)),
      'fc1 fwd': ('mk,kn->mn', (m, d), (d, f)),
      'fc2 fwd': ('mk,kn->mn', (m, f), (f, d)),
      'fc1 dgrad': ('mn,kn->mk', (m, f), (d, f)),
      'fc1 wgrad': ('mk,mn->kn', (m, d), (m, f)),
      'attn qk bhqd': ('bqd,bkd->bqk', (bb * h, n_tok, hd), (bb * h, n_tok, hd)),
      'attn pv bhqd': ('bqk,bkd->bqd', (bb * h, n_tok, n_tok), (bb * h, n_tok, hd)),
      'attn qk bqhd': ('bqhd,bkhd->bhqk', (bb, n_tok, h, hd), (bb, n_tok, h, hd)),
      'attn pv bqhd': ('bhqk,bkhd->bqhd', (bb, h, n_tok, n_tok), (bb, n_tok, h, hd)),
      '2048^3': ('mk,kn->mn', (2048, 2048), (2048, 2048)),
  }
  out = {}
  key = jax.random.PRNGKey(0)
  for name, (eq, sa, sb) in shapes.items():
    a = jax.random.normal(key, sa, jnp.float32)
    b = jax.random.normal(key, sb, jnp.float32)
    c = jax.jit(lambda a, b, eq=eq: jnp.einsum(eq, a, b)).lower(a, b).compile()
    out[name] = ((lambda c=c, a=a, b=b: c(a, b).block_until_ready()), _flops(c))
  return out, {}


BUILDERS = {'step': build_step, 'block': build_block, 'matmul': build_matmul}


def _builder(suite):
  """BUILDERS[suite], or 'module:function' from bench/ (e.g. block_profile:build_dots)."""
  if ':' in suite:
    import importlib  # pylint: disable=g-import-not-at-top
    sys.path.insert(0, os.path.join(ROOT, 'bench'))
    mod, fn = suite.split(':')
    return getattr(importlib.import_module(mod), fn)
  return BUILDERS[suite]


def child(opts):
  """Builds the workload, reports READY, then serves 'run N' / 'peak N' / 'quit' on stdin."""
  t0 = time.perf_counter()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  work, info = _builder(opts['suite'])(opts)
  a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
  mm = jax.jit(lambda x, y: x @ y).lower(a, a).compile()
  for fn, _ in work.values():  # Warm-up.
    fn()
  mm(a, a).block_until_ready()
  info.update(flops={k: f for k, (_, f) in work.items()}, devices=len(jax.devices()),
              build_s=time.perf_counter() - t0)
  print('READY ' + json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd, n = line.split()
    n = int(n)
    if cmd == 'quit':
      break
    res = {}
    if cmd == 'peak':
      ts = []
      for _ in range(n):
        t = time.perf_counter()
        mm(a, a).block_until_ready()
        ts.append(time.perf_counter() - t)
      res['peak'] = ts
    else:
      for name, (fn, _) in work.items():
        for _ in range(opts.get('warm', 1)):  # Untimed: the first call after idling is slow.
          fn()
        ts, cs = [], []
        for _ in range(n):
          c, t = time.process_time(), time.perf_counter()
          fn()
          ts.append(time.perf_counter() - t)
          cs.append(time.process_time() - c)
        res[name] = ts
        res[name + '@cpu'] = cs
    print('RES ' + json.dumps(res), flush=True)


# ----------------------------------------------------------------------------------------
# Parent side.
# ----------------------------------------------------------------------------------------
class Child:
  """One variant's child process."""

  def __init__(self, name, spec, opts, log_dir):
    self.name = name
    env = dict(os.environ)
    flags = ' '.join(spec.get('flags', []))
    env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' ' + flags).strip()
    env.update(spec.get('env', {}))
    o = dict(opts)
    if spec.get('suite'):  # A variant may bring its own workload (same entry names).
      o['suite'] = spec['suite']
    if spec.get('dtype'):
      o['dtype'] = spec['dtype']
    if opts.get('dump_dir'):
      o['dump'] = os.path.join(opts['dump_dir'], f'{opts["suite"]}_{name}.hlo')
    self.log = open(os.path.join(log_dir, f'{name}.log'), 'w')
    self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), '--child',
                               json.dumps(o)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=self.log, text=True, env=env, cwd=ROOT)
    self.info = None

  def wait_ready(self, timeout):
    end = time.time() + timeout
    while time.time() < end:
      r, _, _ = select.select([self.p.stdout], [], [], 5)
      if r:
        line = self.p.stdout.readline()
        if not line:
          raise RuntimeError(f'{self.name}: child died (see its log)')
        if line.startswith('READY '):
          self.info = json.loads(line[6:])
          return
    raise RuntimeError(f'{self.name}: not ready after {timeout}s')

  def ask(self, cmd, n):
    self.p.stdin.write(f'{cmd} {n}\n')
    self.p.stdin.flush()
    while True:
      line = self.p.stdout.readline()
      if not line:
        raise RuntimeError(f'{self.name}: child died (see its log)')
      if line.startswith('RES '):
        return json.loads(line[4:])

  def close(self):
    try:
      self.p.stdin.write('quit 0\n')
      self.p.stdin.flush()
      self.p.wait(timeout=60)
    except Exception:  # pylint: disable=broad-except
      self.p.kill()
    self.log.close()


def _median(xs):
  xs = sorted(xs)
  n = len(xs)
  return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _load():
  try:
    return os.getloadavg()[0]
  except OSError:
    return float('nan')


def parent(args):
  names = args.only.split(',') if args.only else list(VARIANTS)
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    raise SystemExit(f'unknown variants {unknown}; known: {sorted(VARIANTS)}')
  log_dir = args.log_dir
  os.makedirs(log_dir, exist_ok=True)
  if args.dump_dir:
    os.makedirs(args.dump_dir, exist_ok=True)
  opts = dict(suite=args.suite, variant=args.variant, config=args.config, batch=args.batch,
              dump_dir=args.dump_dir, warm=args.warm)
  base = names[0]
  groups = [names]
  if args.max_alive and len(names) > args.max_alive:  # Baseline repeated in every group.
    rest = names[1:]
    k = args.max_alive - 1
    groups = [[base] + rest[i:i + k] for i in range(0, len(rest), k)]
  times, peaks, infos = {}, {}, {}
  loads = [_load()]
  for gi, group in enumerate(groups):
    children = []
    try:
      for name in group:
        c = Child(name if gi == 0 or name != base else f'{name}', VARIANTS[name], opts, log_dir)
        c.wait_ready(args.build_timeout)
        infos[name] = c.info
        children.append(c)
        print(f'# ready: {name:22s} build {c.info["build_s"]:.0f}s  '
              f'flags={" ".join(VARIANTS[name].get("flags", [])) or "-"}', flush=True)
      for r in range(args.rounds):
        order = children[r % len(children):] + children[:r % len(children)]
        for c in order:
          res = c.ask('run', args.iters)
          for k, ts in res.items():
            times.setdefault(c.name, {}).setdefault(k, []).extend(ts)
          peaks.setdefault(c.name, []).extend(c.ask('peak', args.peak_iters)['peak'])
        loads.append(_load())
        print(f'# group {gi} round {r} done, load {loads[-1]:.1f}', flush=True)
    finally:
      for c in children:
        c.close()
  best_peak = max(2 * 2048 ** 3 / min(p) for p in peaks.values())
  base_peak = 2 * 2048 ** 3 / min(peaks[base])
  entries = [e for e in times[base] if not e.endswith('@cpu')]
  print()
  print(f'suite={args.suite} model={args.variant} batch={args.batch} rounds={args.rounds} '
        f'iters/round={args.iters} (+{args.warm} untimed); load average during run: min {min(loads):.1f} '
        f'max {max(loads):.1f}')
  print(f'same-run 2048^3 float32 matmul: best over all children {best_peak / 1e9:.1f} GFLOP/s; '
        f'default-flags child ({base}) {base_peak / 1e9:.1f} GFLOP/s')
  hdr = (f'{"variant":<22}{"entry":<15}{"GFLOP":>9}{"med s":>9}{"best s":>9}{"GFLOP/s":>9}'
         f'{"x base":>8}{"MFU":>7}{"cpu s":>8}{"x base":>8}{"mm GF/s":>9}')
  print(hdr)
  print('-' * len(hdr))
  for entry in entries:
    for name in names:
      if name not in times or entry not in times[name]:
        continue
      ts = times[name][entry]
      fl = infos[name]['flops'][entry]
      if args.suite == 'step' and entry == 'step':
        fl = fl  # XLA's count of what we compute
      med, best = _median(ts), min(ts)
      rel = _median(times[base][entry]) / med
      ach = fl / best
      mmr = 2 * 2048 ** 3 / min(peaks[name])
      cpu = _median(times[name][entry + '@cpu'])
      cpu_rel = _median(times[base][entry + '@cpu']) / cpu
      print(f'{name:<22}{entry:<15}{fl / 1e9:>9.1f}{med:>9.3f}{best:>9.3f}{ach / 1e9:>9.1f}'
            f'{rel:>8.2f}{ach / best_peak:>7.2f}{cpu:>8.3f}{cpu_rel:>8.2f}{mmr / 1e9:>9.1f}')
    print()
  if args.suite == 'step':
    for name in names:
      i = infos[name]
      print(f'{name}: devices={i["devices"]} temp MiB={i["peak_mib"]:.0f} '
            f'analytic original GFLOP/step={i["analytic_original"] / 1e9:.1f}')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'times': times, 'peaks': peaks, 'infos': infos, 'loads': loads}, f)


def main():
  if len(sys.argv) == 3 and sys.argv[1] == '--child':
    sys.path.insert(0, ROOT)
    child(json.loads(sys.argv[2]))
    return
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--suite', default='step', help=f'{sorted(BUILDERS)} or module:function')
  ap.add_argument('--only', default='', help='Comma-separated variant names; first = baseline.')
  ap.add_argument('--variant', default='S/2', help='ViT variant.')
  ap.add_argument('--config', default='configs/eurosat.py:stssl_fixmatch,40')
  ap.add_argument('--batch', type=int, default=16, help='Images per block/matmul workload.')
  ap.add_argument('--rounds', type=int, default=3)
  ap.add_argument('--iters', type=int, default=1, help='Timed iterations per child per round.')
  ap.add_argument('--warm', type=int, default=1,
                  help='Untimed iterations per child per round before the timed ones.')
  ap.add_argument('--peak_iters', type=int, default=3)
  ap.add_argument('--max_alive', type=int, default=0,
                  help='Children alive at once (0: all); the baseline joins every group.')
  ap.add_argument('--build_timeout', type=int, default=900)
  ap.add_argument('--log_dir', default='/tmp/cpu_flags_logs')
  ap.add_argument('--dump_dir', default='', help='Write each variant\'s compiled HLO here.')
  ap.add_argument('--json', default='', help='Also write raw times to this file.')
  parent(ap.parse_args())


if __name__ == '__main__':
  main()
