"""Where one encoder block's time goes on XLA:CPU: its dots alone and a per-thunk trace.

  python bench/block_profile.py trace --variant=S/2 [--flags=...]
  python bench/cpu_flags.py --suite=block_profile:build_dots --only=base,ynn_off --rounds=4

`build_dots` re-runs every dot autodiff emits for the block's fwd+bwd (batch 16 at the train
step's shapes) one by one with the same operand shapes and dimension numbers: a lower bound
of the block with this dot backend. Also here: `build_dots_each` (one entry per dot, for `cpu_flags.py --suite=
block_profile:build_dots_each`) and `build_torch_block[_sdpa]`, the same block in PyTorch
(timm layout), used by cpu_flags.py's 'torch' / 'torch_sdpa' variants.

`trace` compiles the fwd+bwd once with `--xla_cpu_enable_xprof_traceme=true`, runs it under
jax.profiler and sums thunk durations per category (YNN dot fusions, Eigen dots,
copies/transposes, elementwise fusions) and per op (op_name metadata), largest first.
Thunks may overlap on the two threads, so the sum can exceed the wall time.
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import cpu_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

def build_dots(opts):
  """{'fwdbwd': every dot of the block's fwd+bwd, each run alone with its operand shapes}.

  The dots are read from the un-optimized HLO of the block's gradient (what autodiff asks
  for, before XLA picks layouts or fuses), so their sum is the block's pure-dot time with
  the dot backend of the current XLA_FLAGS.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from stssl_jax.models import vit  # pylint: disable=g-import-not-at-top
  v = vit.get_variant(opts['variant'])
  n = (32 // v['patch']) ** 2 + 2
  blk = vit.EncoderBlock(v['heads'], v['mlp_dim'], 0.0, None)
  x = jnp.ones((opts.get('batch', 16), n, v['width']), jnp.float32)
  p = blk.init(jax.random.PRNGKey(0), x)['params']
  hlo = jax.jit(jax.grad(lambda p, x: jnp.sum(blk.apply({'params': p}, x)),
                         argnums=(0, 1))).lower(p, x).as_text(dialect='hlo')
  shapes = {}
  for line in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT )?%?(\S+) = f32\[([\d,]*)\]', line)
    if m:
      shapes[m.group(1)] = tuple(int(i) for i in m.group(2).split(',') if i)
  work = []
  for line in hlo.splitlines():
    ops = re.search(r' dot\((?:f32\S+ )?%?([^,\s]+), (?:f32\S+ )?%?([^,\s)]+)\)', line)
    if not ops:
      continue
    dims = {}
    for k in ('lhs_batch_dims', 'rhs_batch_dims', 'lhs_contracting_dims',
              'rhs_contracting_dims'):
      m = re.search(k + r'=\{([\d,]*)\}', line)
      dims[k] = tuple(int(i) for i in m.group(1).split(',') if i) if m else ()
    dn = ((dims['lhs_contracting_dims'], dims['rhs_contracting_dims']),
          (dims['lhs_batch_dims'], dims['rhs_batch_dims']))
    a = jnp.ones(shapes[ops.group(1)], jnp.float32)
    b = jnp.ones(shapes[ops.group(2)], jnp.float32)
    f = jax.jit(lambda a, b, dn=dn: jax.lax.dot_general(a, b, dn)).lower(a, b).compile()
    label = (f'{"x".join(map(str, a.shape))}.{"x".join(map(str, b.shape))} '
             f'c{dn[0][0]}{dn[0][1]}b{dn[1][0]}{dn[1][1]}'.replace(' ', '').replace('()', '-'))
    work.append((f, a, b, cpu_flags._flops(f), label))  # pylint: disable=protected-access

  if opts.get('each'):
    return {w[4]: ((lambda w=w: w[0](w[1], w[2]).block_until_ready()), w[3])
            for w in work}, {'n_dots': len(work)}

  def run():
    for f, a, b, _, _ in work:
      f(a, b).block_until_ready()

  return {'fwdbwd': (run, sum(w[3] for w in work))}, {'n_dots': len(work)}


def build_dots_each(opts):
  """Like build_dots, one entry per dot (for `cpu_flags.py --suite=block_profile:build_dots_each`)."""
  return build_dots(dict(opts, each=True))


def build_torch_block(opts):
  """The same block in PyTorch (timm layout, 'fwd' and 'fwdbwd'), FLOPs from the jax block.

  opts['torch_attn']: 'manual' (q @ k^T * scale, softmax, @ v) or 'sdpa'
  (F.scaled_dot_product_attention). Threads: torch.set_num_threads(os.cpu_count()).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn as tnn  # pylint: disable=g-import-not-at-top
  from stssl_jax.models import vit  # pylint: disable=g-import-not-at-top
  jax_work, _ = cpu_flags.build_block(dict(opts, dump=None))
  torch.set_num_threads(os.cpu_count())
  v = vit.get_variant(opts['variant'])
  d, h, f = v['width'], v['heads'], v['mlp_dim']
  n = (32 // v['patch']) ** 2 + 2
  sdpa = opts.get('torch_attn', 'manual') == 'sdpa'

  class Block(tnn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2 = tnn.LayerNorm(d, eps=1e-6), tnn.LayerNorm(d, eps=1e-6)
      self.qkv, self.proj = tnn.Linear(d, 3 * d), tnn.Linear(d, d)
      self.fc1, self.fc2, self.act = tnn.Linear(d, f), tnn.Linear(f, d), tnn.GELU()

    def forward(self, x):
      b, l, _ = x.shape
      qkv = self.qkv(self.norm1(x)).reshape(b, l, 3, h, d // h).permute(2, 0, 3, 1, 4)
      q, k, vv = qkv.unbind(0)
      if sdpa:
        o = torch.nn.functional.scaled_dot_product_attention(q, k, vv)
      else:
        a = (q @ k.transpose(-2, -1)) * (d // h) ** -0.5
        o = a.softmax(dim=-1) @ vv
      x = x + self.proj(o.transpose(1, 2).reshape(b, l, d))
      return x + self.fc2(self.act(self.fc1(self.norm2(x))))

  blk = Block()
  x = torch.randn(opts.get('batch', 16), n, d, requires_grad=True)
  ct = torch.randn_like(x)

  def fwd():
    with torch.no_grad():
      blk(x)

  def fwdbwd():
    blk.zero_grad(set_to_none=True)
    x.grad = None
    (blk(x) * ct).sum().backward()

  return {'fwd': (fwd, jax_work['fwd'][1]), 'fwdbwd': (fwdbwd, jax_work['fwdbwd'][1])}, {}


def build_torch_block_sdpa(opts):
  return build_torch_block(dict(opts, torch_attn='sdpa'))


# ---------------------------------------------------------------------------------------
# trace
# ---------------------------------------------------------------------------------------
def _categorise(name, line):
  if 'ynn' in name:
    return 'YNN dot fusion'
  if 'xnn' in name or 'onednn' in name:
    return 'library dot fusion'
  if re.search(r' dot\(', line):
    return 'Eigen dot'
  if (re.search(r' (copy|transpose)\(', line) or name.startswith(('copy', 'transpose'))
      or '_copy_fusion' in name or 'transpose' in name):
    return 'copy/transpose'
  if 'fusion' in name or 'wrapped' in name or name.startswith(('add', 'multiply', 'select')):
    return 'elementwise/reduce fusion'
  return 'other'


def trace_child(opts):
  """Runs in a child with XLA_FLAGS set: compile, warm, trace one call, summarise."""
  import jax  # pylint: disable=g-import-not-at-top
  work, _ = cpu_flags.build_block(dict(opts, dump=os.path.join(opts['dir'], 'block.hlo')))
  fn = work['fwdbwd'][0]
  fn()
  t = time.perf_counter()
  fn()
  plain = time.perf_counter() - t
  with jax.profiler.trace(opts['dir'], create_perfetto_trace=True):
    t = time.perf_counter()
    fn()
    traced = time.perf_counter() - t
  hlo = open(os.path.join(opts['dir'], 'block.hlo')).read()
  lines = {}
  for l in hlo.splitlines():
    m = re.match(r'\s*(?:ROOT )?%(\S+) = ', l)
    if m:
      lines.setdefault(m.group(1), l.strip())
  f = glob.glob(os.path.join(opts['dir'], 'plugins/profile/*/perfetto_trace.json.gz'))[0]
  ev = json.load(gzip.open(f))
  ev = ev['traceEvents'] if isinstance(ev, dict) else ev
  cat, ncat, per_op, n_op = (collections.Counter() for _ in range(4))
  for e in ev:
    name = e.get('name', '')
    if e.get('ph') != 'X' or name not in lines:
      continue
    line = lines[name]
    c = _categorise(name, line)
    cat[c] += e['dur']
    ncat[c] += 1
    op = re.search(r'op_name="([^"]*)"', line)
    op = op.group(1) if op else ''
    op = re.sub(r'^jit\([^)]*\)/', '', op)
    shape = re.search(r'= (\S+?)\{', line)
    key = f'{c[:10]:10s} {(shape.group(1) if shape else "")[:26]:26s} {op[:80]}'
    per_op[key] += e['dur']
    n_op[key] += 1
  total = sum(cat.values())
  print(f'wall: plain {plain * 1e3:.1f} ms, under trace {traced * 1e3:.1f} ms; '
        f'sum of thunk durations {total / 1e3:.1f} ms (load {os.getloadavg()[0]:.1f})')
  for c, t in cat.most_common():
    print(f'  {c:28s} {t / 1e3:9.1f} ms {100 * t / total:5.1f}%  ({ncat[c]} thunks)')
  print('largest ops:')
  for k, t in per_op.most_common(opts.get('top', 25)):
    print(f'  {t / 1e3:8.1f} ms {100 * t / total:5.1f}% x{n_op[k]:<3d} {k}')


def trace(args):
  d = tempfile.mkdtemp(prefix='block_trace_')
  opts = dict(variant=args.variant, batch=args.batch, dir=d, top=args.top)
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') + ' --xla_cpu_enable_xprof_traceme=true '
                      + args.flags).strip()
  print(f'XLA_FLAGS={env["XLA_FLAGS"]} model={args.variant} batch={args.batch}')
  subprocess.run([sys.executable, os.path.abspath(__file__), '--trace_child', json.dumps(opts)],
                 env=env, check=True, cwd=ROOT, stderr=subprocess.DEVNULL)


def main():
  if len(sys.argv) == 3 and sys.argv[1] == '--trace_child':
    sys.path.insert(0, ROOT)
    trace_child(json.loads(sys.argv[2]))
    return
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('mode', choices=['trace'])
  ap.add_argument('--variant', default='S/2')
  ap.add_argument('--batch', type=int, default=16)
  ap.add_argument('--flags', default='', help='Extra XLA_FLAGS for every child.')
  ap.add_argument('--top', type=int, default=25)
  args = ap.parse_args()
  trace(args)


if __name__ == '__main__':
  main()
