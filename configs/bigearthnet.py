"""BigEarthNet-S2 runs of the paper (METHOD 10) and a CPU demo on the 14 bundled patches.

  python main.py --config=configs/bigearthnet.py:stssl_fixmatch,0.01 --workdir=runs/ben_stssl_1
  python main.py --config=configs/bigearthnet.py:fixmatch,0.08,19 --workdir=runs/ben_fm_8_19
  python main.py --config=configs/bigearthnet.py:demo --workdir=runs/ben_demo

arg = "ALGORITHM[,FRACTION][,19][,demo]": FRACTION in 0.005 | 0.01 | 0.02 | 0.04 | 0.08
(default 0.01, the paper's), "19" selects the 19-class nomenclature (default: 43 classes, as
released). "demo" alone means stssl_fixmatch on data/bigearthnet_sample (prepared into
prepared/bigearthnet_sample), a tiny ViT on the CPU.
"""

from configs import default
from stssl_jax import algorithms

FRACTIONS = (0.005, 0.01, 0.02, 0.04, 0.08)


def parse_arg(arg):
  parts = [p.strip() for p in (arg or '').split(',') if p.strip()]
  demo = 'demo' in parts
  classes = 19 if '19' in parts else 43
  parts = [p for p in parts if p not in ('demo', '19', '43')]
  algo = next((p for p in parts if not _is_number(p)), 'stssl_fixmatch')
  frac = next((float(p) for p in parts if _is_number(p)), 0.01)
  if frac not in FRACTIONS and not demo:
    raise ValueError(f'BigEarthNet label fraction must be one of {FRACTIONS}, got {frac}')
  return algo, frac, classes, demo


def _is_number(s):
  try:
    float(s)
    return True
  except ValueError:
    return False


def get_config(arg=None):
  algo, frac, classes, demo = parse_arg(arg)
  c = default.get_config()
  c.data.name = 'bigearthnet'
  c.data.data_dir = 'prepared/bigearthnet'
  c.data.train_split, c.data.eval_split, c.data.test_split = 'train', 'val', 'test'
  c.data.image_size, c.data.crop_padding = 128, 16
  c.data.num_channels = 3
  c.data.num_labels = 0
  c.multilabel = True
  c.model.variant = 'S/16'
  c.model.num_classes = classes
  a = algorithms.get(algo)
  c.algorithm = algo
  c.threshold = (0.05, 0.70)
  c.lambda_u = a.lambda_u  # DeFixMatch 0.5, the others 1 (METHOD 10).
  c.distill, c.lambda_d = 'mse', 1.0
  c.batch_size, c.uratio = 64, 7
  c.num_steps, c.warmup_steps = 64_000, 0
  c.lr, c.weight_decay = 1e-4, 5e-4
  c.ema_momentum = a.ema_momentum(0.999)  # 0 for supervised and st_supervised.
  c.eval_every, c.eval_batch_size, c.patience = 2000, 512, 16_000
  c.data.label_fraction = frac
  c.data.label_set = 'label19' if classes == 19 else 'label'
  c.data.sampler_epochs = 1  # METHOD 3.6: one "epoch" (used with data.sampler='original').
  if demo:
    c.data.data_dir = 'prepared/bigearthnet_sample'
    c.data.label_fraction = 0.0  # 7 training patches: all labeled (and all unlabeled).
    c.data.image_size, c.data.crop_padding = 32, 4
    c.model.variant = 'test'
    c.model.drop_path = 0.0
    c.batch_size, c.uratio = 4, 2
    c.num_steps, c.warmup_steps = 60, 5
    c.lr = 1e-3
    c.ema_momentum = a.ema_momentum(0.9)
    c.eval_every, c.eval_batch_size = 30, 8
    c.log_every, c.checkpoint_every = 10, 30
  return c
