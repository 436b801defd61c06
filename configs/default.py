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
  c.data.label_set = 'label'  # Record field with the labels: 'label' or (BigEarthNet) 'label19'.
  c.data.label_fraction = 0.0  # BigEarthNet labeled fraction (0.005..0.08); 0 = use num_labels.
  c.data.sampler = 'seeded'  # 'seeded' (by seed, per pass) | 'original' (by epoch, METHOD 3.6).
  c.data.sampler_epochs = 200  # E of the 'original' sampler (EuroSAT 200, BigEarthNet 1).
  c.data.cache_max_bytes = 1 << 30  # Prepared-image cache per stream and process (or worker).
  c.data.ms_policy = 'kornia_0_7_2'  # Multi-band RandAugment: kornia_0_7_0 | _0_7_2 | _0_7_3.
  c.data.ms_posterize_quirk = True  # [QUIRK] kornia 0.7 posterizes to 0 bits (black); False: 4.
  c.data.ms_solarize_add_threshold = -1.0  # < 0: U(0, 1) per image (kornia 0.7); else fixed.
  c.data.ms_saturation = 'hsv'  # 'hsv': kornia's (any C, blend to band max) | 'luma' (RGB).
  c.data.no_loc = False  # METHOD 1.4: lat = lon = 0 everywhere.
  c.data.no_time = False  # METHOD 1.4: every date 2017-01-01.
  c.data.dummy_date = '2000-1-1 00:00:00'  # Date for datasets without dates (EuroSAT).

  # ---- Model -----------------------------------------------------------------------------
  c.model = ml_collections.ConfigDict()
  c.model.variant = 'S/2'  # ViT registry name: Ti/S/B with patch 2/4/16 (see models/vit.py).
  # Explicit dims; each one set (> 0) replaces the variant's value (e.g. variant 'S/16' with
  # depth 6), so a custom ViT needs no code: models.vit.variant_of(config.model).
  c.model.patch = c.model.width = c.model.depth = c.model.heads = c.model.mlp_dim = 0
  c.model.num_classes = 10  # C.
  c.model.drop_path = 0.2  # Max stochastic-depth rate (block i gets rate * i / (depth - 1)).
  c.model.init_from = ''  # Optional pretrained checkpoint (.npz of converted params).
  # The teacher's metadata featurizer (metadata.py): 'linear' (the released m itself),
  # 'sphere' (x, y, z on the unit sphere), 'multiscale' (sinusoids of lat and lon at
  # min_freq * 2^i rad^-1, i < num_scales) or 'sph_harmonics' (real, degree <= meta_sh_degree).
  c.model.meta_encoding = 'linear'
  c.model.meta_num_scales = 6
  c.model.meta_min_freq = 1.0
  c.model.meta_sh_degree = 4
  c.dtype = 'float32'  # Compute dtype; params and optimizer state stay float32.

  # ---- Algorithm -------------------------------------------------------------------------
  # supervised | st_supervised | X | stssl_X, X in fixmatch, freematch, softmatch,
  # defixmatch, cap, cdmad, udal (stssl_jax.algorithms.names()).
  c.algorithm = 'stssl_fixmatch'
  c.multilabel = False  # Multi-label (sigmoid/BCE) instead of single-label (softmax/CE).
  # Fixed confidence threshold (METHOD 4; FixMatch, DeFixMatch, CDMAD, UDAL): (tau,) or,
  # multi-label only, (tau_neg, tau_pos).
  c.threshold = (0.95,)
  c.lambda_u = 1.0  # Weight of the unlabeled consistency term.
  c.distill = 'mse'  # STSSL distillation: mse | mae | cos | none.
  c.lambda_d = 0.01  # Weight of the distillation term (EuroSAT 0.01).
  c.pseudo_label_source = 'online'  # Pseudo-labels from the 'online' teacher or its 'ema' (CAP).
  c.pseudo_label_ema_train_mode = True  # [QUIRK] 7.4: the EMA pseudo-labeller runs drop-path.
  # Diagnostics (pl_quality.py): STSSL also runs the image-only student on the weak view, no
  # gradient, to log the pseudo-labels it would have proposed: every N-th step (0: never).
  # It adds one forward of the weak unlabeled batch to the steps that do it.
  c.image_only_pl_every = 1

  # Per-algorithm settings (METHOD 7; defaults are the released BigEarthNet values).
  c.freematch = ml_collections.ConfigDict()
  c.freematch.ema_p = 0.999  # Momentum of the self-adaptive threshold statistics.
  c.freematch.lambda_e = 0.001  # Weight of the fairness term (USB default 0.01).
  c.freematch.sup_warmup_steps = 2000  # Supervised-only loss (and no distillation) before.
  c.freematch.use_quantile = False  # 0.8-quantile instead of the mean for tau (single-label).
  c.freematch.clip_thresh = False  # Clip tau to at most 0.95.
  c.freematch.empty_class = 'nan'  # [QUIRK] 7.1 multi-label class without masked entry:
  #                                  'nan' (released 0/0) | 'drop' (left out of L_fair).
  c.softmatch = ml_collections.ConfigDict()
  c.softmatch.ema_p = 0.999  # Momentum of mu, var and the alignment estimates.
  c.softmatch.n_sigma = 2.0  # Width of the truncated Gaussian in standard deviations.
  c.softmatch.dist_align = True  # Align the weak probs before weighting.
  c.softmatch.dist_uniform = False  # Single-label target: uniform, or EMA of labeled probs.
  c.softmatch.per_class = False  # Per-class mu/var (not implemented; off in every run).
  c.cap = ml_collections.ConfigDict()
  c.cap.queue_length = 64_000  # Rows of the FIFO probability queue.
  c.cap.pos_per = 1.0  # pos threshold = Q(1 - pos_per * pi).
  c.cap.neg_per = 1.0  # neg threshold = Q(neg_per * (1 - pi)).
  c.cap.gamma_pos = 1.0  # ASL focusing exponent of positives.
  c.cap.gamma_neg = 4.0  # ASL focusing exponent of negatives.
  c.cap.clip = 0.05  # ASL probability margin of negatives.
  c.cap.eps = 1e-8  # ASL log clamp.
  c.cdmad = ml_collections.ConfigDict()
  c.cdmad.debias_start = 2000  # First update whose targets (and evaluation) are debiased.
  c.cdmad.bias_head = 'quirk'  # [QUIRK] 7.5 STSSL bias from the teacher's untrained 'quirk'
  #                              aux head (released) or its trained 'joint_head'.
  c.udal = ml_collections.ConfigDict()
  c.udal.ema_p = 0.999  # Momentum of the alignment estimates.
  c.udal.a_min = 0.5  # Final alpha of the schedule.
  c.udal.k = 2.0  # Exponent of the alpha schedule.
  c.udal.dist_uniform = False  # Single-label p_data: uniform, or EMA of labeled probs.
  c.udal.student_pbar = 'teacher'  # [QUIRK] 7.6 the STSSL student's unlabeled adjustment
  #                                  reads the 'teacher' estimate (released) or its 'student' own.
  c.udal.min_prevalence = 0.0  # Floor on p_data (1e-6 avoids log 0 for absent classes).

  # ---- Optimisation (METHOD 8) -----------------------------------------------------------
  c.batch_size = 8  # Global labeled batch B_l.
  c.uratio = 1  # B_u = uratio * B_l.
  c.num_steps = 204_800  # Total optimizer steps T.
  c.warmup_steps = 5_120  # Linear warm-up W.
  c.lr = 5e-5  # Base LR.
  c.weight_decay = 5e-4  # Decoupled, scaled by the current LR (optax.adamw).
  c.cosine_factor = 7 / 16  # LR = cos(pi * factor * progress) after warm-up.
  c.ema_momentum = 0.999  # EMA of all params (0 for supervised baselines, incl. st_supervised).
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

  # ---- Metadata-shift evaluation (--mode=eval_shift) -----------------------------------
  c.eval_shift = ml_collections.ConfigDict()
  c.eval_shift.shift_lat = 10.0  # Degrees added to every latitude (clipped to [-90, 90]).
  c.eval_shift.shift_lon = 20.0  # Degrees added to every longitude (wrapped).
  c.eval_shift.shift_days = 182  # Days added to every acquisition date.
  return c
