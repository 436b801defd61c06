"""Every config field, one comment each. Dataset configs start from this.

A field that is not here cannot be set from the command line: ml_collections
raises on `--config.unknown_key=...`, which is what we want.
"""

import ml_collections


def get_config(arg=None):
  """Returns the default config. `arg` is unused (kept for the get_config(arg) convention)."""
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds params init, drop-path, data order and augmentation.

  # ---- Data ------------------------------------------------------------------------------
  c.data = ml_collections.ConfigDict()
  c.data.name = 'eurosat'  # TFDS builder name written by data_prep.
  c.data.data_dir = 'prepared'  # Root holding the prepared TFDS dataset (data_prep --out).
  c.data.num_labels = 40  # EuroSAT: total labeled images (10/20/40/80); 0 means all labeled.
  c.data.train_split = 'train'  # Unlabeled pool (labeled images are also in it, METHOD 3.1).
  c.data.eval_split = 'test'  # Evaluation/selection split (EuroSAT: the 20% test split).
  c.data.test_split = ''  # Optional final test split evaluated with the best checkpoint.
  c.data.image_size = 32  # Network input side; records are resized to it (PIL bilinear).
  c.data.crop_padding = 4  # Reflect padding before the random crop: int(32 * (1 - 0.875)).
  c.data.num_channels = 3  # Bands fed to the network.
  c.data.num_workers = 0  # grain worker processes per host (0 = in-process).
  c.data.prefetch = 2  # Batches each worker prefetches.
  c.data.randaugment_n = 3  # Ops per strong view (USB RandAugment(3, 5); m is ignored).
  c.data.no_loc = False  # METHOD 1.4: lat = lon = 0 everywhere.
  c.data.no_time = False  # METHOD 1.4: every date 2017-01-01.
  c.data.dummy_date = '2000-1-1 00:00:00'  # Date for datasets without dates (EuroSAT).

  # ---- Model -----------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.variant = 'S/2'  # ViT registry name: Ti/S/B with patch 2/4/16 (see models/vit.py).
  c.model.num_classes = 10  # C.
  c.model.drop_path = 0.2  # Max stochastic-depth rate (block i gets rate * i / (depth - 1)).
  c.model.init_from = ''  # Optional pretrained checkpoint (.npz of converted params).
  c.dtype = 'float32'  # Compute dtype; params and optimizer state stay float32.

  # ---- Algorithm -------------------------------------------------------------------------
  c.algorithm = 'stssl_fixmatch'  # supervised | fixmatch | stssl_fixmatch.
  c.multilabel = False  # Multi-label (sigmoid/BCE) instead of single-label (softmax/CE).
  # FixMatch confidence threshold (METHOD 4): (tau,) or, multi-label only, (tau_neg, tau_pos).
  c.threshold = (0.95,)
  c.lambda_u = 1.0  # Weight of the unlabeled consistency term.
  c.distill = 'mse'  # STSSL distillation: mse | mae | cos | none.
  c.lambda_d = 0.01  # Weight of the distillation term (EuroSAT 0.01).
  c.pseudo_label_source = 'online'  # STSSL pseudo-labels from the 'online' teacher or its 'ema'.

  # ---- Optimisation (METHOD 8) -----------------------------------------------------------
  c.batch_size = 8  # Global labeled batch B_l.
  c.uratio = 1  # B_u = uratio * B_l.
  c.num_steps = 204_800  # Total optimizer steps T.
  c.warmup_steps = 5_120  # Linear warm-up W.
  c.lr = 5e-5  # Base LR.
  c.weight_decay = 5e-4  # Decoupled, scaled by the current LR (optax.adamw).
  c.cosine_factor = 7 / 16  # LR = cos(pi * factor * progress) after warm-up.
  c.ema_momentum = 0.999  # EMA of all params (0 for supervised baselines).
  c.wd_quirk = True  # STSSL models decay cls/pos/extra tokens (released behaviour, METHOD 8).

  # ---- Evaluation, checkpoints, logging --------------------------------------------------
  c.eval_every = 2048  # Evaluate after steps with (step + 1) % K == 0 and after the last.
  c.eval_batch_size = 16  # Global eval batch (padded and masked).
  c.patience = 32_768  # Early stopping: stop when step - best_step >= patience.
  c.f1_threshold = 0.5  # Multi-label F1 predicts `logit > this` (METHOD 9: the original's rule).
  c.eval_teacher = True  # Also evaluate the EMA teacher with metadata (logged separately).
  c.log_every = 50  # Steps between training-metric writes (the only host syncs).
  c.checkpoint_every = 1024  # Steps between checkpoints.
  c.keep_checkpoints = 2  # Most recent checkpoints kept (best one kept separately).
  c.max_steps_this_run = -1  # Stop after this many steps in this process (tests; -1 = off).
  return c
