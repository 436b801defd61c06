"""EuroSAT runs of the paper (METHOD 10) and a CPU demo.

  python main.py --config=configs/eurosat.py:stssl_fixmatch,40 --workdir=runs/es_stssl_40
  python main.py --config=configs/eurosat.py:stssl_freematch,40 --workdir=runs/es_fm_40
  python main.py --config=configs/eurosat.py:demo --workdir=runs/demo
  python main.py --config=configs/eurosat.py:stssl_fixmatch,40,cpu --workdir=runs/cpu_stssl

arg = "ALGORITHM[,NUM_LABELS][,demo|cpu]": ALGORITHM is supervised, st_supervised, or X / stssl_X
with X in fixmatch, freematch, softmatch, defixmatch, cdmad, udal (default stssl_fixmatch);
CAP is multi-label only. NUM_LABELS in 10 | 20 | 40 | 80 (default 40). "demo" alone means
stssl_fixmatch,80,demo: the bundled sample (data/eurosat_sample, prepared into
prepared/eurosat_sample), a tiny ViT on the CPU, under 5 minutes on 2 cores. "cpu" is the
full data (prepared/eurosat, e.g. with a region held out) at a CPU-sized scale: ViT XXS/4 at
32 px, 4,000 steps of 16 labeled + 48 unlabeled images, about 40 minutes on one core.

Only supervised, FixMatch and STSSL-FixMatch were released for EuroSAT. The other algorithms
use their released BigEarthNet settings (configs/default.py, METHOD 10) with EuroSAT's
single-label threshold tau = 0.95 where they take one [INFERRED].
"""

from configs import default
from stssl_jax import algorithms

# Single-label EuroSAT takes every algorithm but the multi-label-only ones (CAP).
ALGORITHMS = tuple(n for n in algorithms.names() if not algorithms.get(n).multilabel_only)


def parse_arg(arg):
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  demo = 'demo' in parts
  cpu = 'cpu' in parts
  parts = [p for p in parts if p not in ('demo', 'cpu')]
  algo = next((p for p in parts if not p.isdigit()), 'stssl_fixmatch')
  labels = next((int(p) for p in parts if p.isdigit()), 80 if demo else 40)
  if algo in algorithms.names() and algorithms.get(algo).multilabel_only:
    raise ValueError(f'{algo} is multi-label only; EuroSAT is single-label (use BigEarthNet)')
  if algo not in ALGORITHMS:
    raise ValueError(f'unknown EuroSAT algorithm {algo!r}; choose from {ALGORITHMS}')
  if labels not in (10, 20, 40, 80):
    raise ValueError(f'EuroSAT num_labels must be 10, 20, 40 or 80, got {labels}')
  if demo and cpu:
    raise ValueError('choose one of demo and cpu')
  return algo, labels, demo, cpu


def get_config(arg=None):
  algo, labels, demo, cpu = parse_arg(arg)
  c = default.get_config()
  c.data.name = 'eurosat'
  c.data.data_dir = 'prepared/eurosat'
  c.data.num_labels = labels
  c.model.variant = 'S/2'
  c.model.num_classes = 10
  c.algorithm = algo
  c.threshold = (0.95,)
  a = algorithms.get(algo)
  c.lambda_u = a.lambda_u
  c.distill = 'mse'
  c.lambda_d = 0.01
  c.batch_size, c.uratio = 8, 1
  c.num_steps, c.warmup_steps = 204_800, 5_120
  c.lr, c.weight_decay = 5e-5, 5e-4
  c.ema_momentum = a.ema_momentum(0.999)
  c.eval_every, c.eval_batch_size, c.patience = 2048, 16, 32_768
  if demo:
    c.data.data_dir = 'prepared/eurosat_sample'
    c.data.image_size, c.data.crop_padding = 16, 2
    c.model.variant = 'test'
    c.model.drop_path = 0.0
    c.batch_size, c.uratio = 16, 2
    c.num_steps, c.warmup_steps = 300, 20
    c.lr = 1e-3
    c.ema_momentum = a.ema_momentum(0.95)
    # Statistics that adapt within the 300 demo steps.
    c.freematch.sup_warmup_steps = c.cdmad.debias_start = c.warmup_steps
    c.freematch.ema_p = c.softmatch.ema_p = c.udal.ema_p = 0.99
    c.threshold = (0.7,)
    c.lambda_d = 0.1
    c.eval_every, c.eval_batch_size = 100, 64
    c.log_every, c.checkpoint_every = 25, 100
  if cpu:
    # Paper threshold, EMA, distillation weight and weight decay; a model, batch and schedule
    # that fit a CPU (lr raised for the 50x shorter schedule).
    c.model.variant = 'XXS/4'
    c.model.drop_path = 0.0
    c.batch_size, c.uratio = 16, 3
    c.num_steps, c.warmup_steps = 4_000, 200
    c.lr = 5e-4
    c.eval_every, c.eval_batch_size, c.patience = 500, 256, 4_000
    c.log_every, c.checkpoint_every = 50, 500
  return c
