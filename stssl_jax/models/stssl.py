"""STSSL teacher/student models and the plain ViT baseline (METHOD 2.3-2.6).

Every model returns `(logits [B, C], feats)` with named features:

- `PlainViT`: a ViT with a head on the cls token; feats {'cls'}.
- `STSSLModel`: ONE param tree holding both networks, so EMA, weight decay, sharding and
  checkpoints treat it as a single pytree (big_vision's distill keeps teacher and student the
  same way):

    {'teacher': {'backbone', 'meta_encoder', 'meta_token' [1, 1, D], 'head',
                 'aux_head' (only STSSL-CDMAD's released bias)},
     'student': {'backbone', 'placeholder' [1, 1, D] (only with distillation), 'head'}}

  (no 'student' for `st_supervised`, the teacher branch alone).

  `STSSLModel.teacher(x, meta)` sees image + metadata token t_m = E(m) + p_T (appended last,
  after the position embedding); `STSSLModel.student(x)` sees the image only, plus the learned
  placeholder p_S when distillation is on. Either method can be applied alone with the full
  tree: `model.apply({'params': p}, x, m, train=True, method=STSSLModel.teacher,
  rngs={'dropout': key})`.
"""

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from stssl_jax import algorithms, metadata
from stssl_jax.models import meta_encoder, vit

Dtype = Any
Feats = dict[str, jax.Array]

# p_T and p_S: plain (not truncated) N(0, 0.02^2), METHOD 2.3 / 2.5.
_token_init = nn.initializers.normal(0.02)


def _encoder(variant: str, drop_path: float, dtype: Optional[Dtype]) -> vit.ViTEncoder:
  return vit.ViTEncoder(**vit.get_variant(variant), drop_path=drop_path, dtype=dtype,
                        name='backbone')


def _head(num_classes: int, width: int, dtype: Optional[Dtype]) -> nn.Dense:
  return vit.torch_dense(num_classes, width, dtype, 'head')


class PlainViT(nn.Module):
  """Single ViT with a linear head on cls (supervised / plain SSL baselines, METHOD 2.6).

  Attributes:
    variant: name in `vit.VARIANTS`.
    num_classes: C.
    drop_path: maximum stochastic-depth rate.
    dtype: compute dtype (None: follow inputs and params).
  """
  variant: str
  num_classes: int
  drop_path: float = 0.0
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_tokens: bool = False) -> tuple[jax.Array, Feats]:
    """Args: x [B, H, W, C] images; train enables drop-path; return_tokens adds feats['tokens'].

    Returns:
      logits [B, num_classes], feats {'cls': [B, D]} (+ 'tokens' [B, N+1, D]).
    """
    z = _encoder(self.variant, self.drop_path, self.dtype)(x, train=train)
    feats = {'cls': z[:, 0]}
    if return_tokens:
      feats['tokens'] = z
    return _head(self.num_classes, z.shape[-1], self.dtype)(z[:, 0]), feats


class TeacherBranch(nn.Module):
  """Metadata-aware teacher f_T(x, m) (METHOD 2.3). Attributes as in `STSSLModel`."""
  variant: str
  num_classes: int
  drop_path: float = 0.0
  dtype: Optional[Dtype] = None
  aux_head: bool = False
  meta_encoding: str = 'linear'
  meta_encoding_params: Optional[Mapping[str, Any]] = None

  @nn.compact
  def __call__(self, x: jax.Array, meta: Optional[jax.Array], train: bool = False,
               return_tokens: bool = False) -> tuple[jax.Array, Feats]:
    width = vit.get_variant(self.variant)['width']
    token, feats = None, {}
    if meta is not None:
      embed = meta_encoder.MetadataEncoder(width, self.dtype, self.meta_encoding,
                                       self.meta_encoding_params, name='meta_encoder')(meta)
      p_t = self.param('meta_token', _token_init, (1, 1, width))
      token = embed[:, None, :] + jnp.asarray(p_t, embed.dtype)
      feats['meta_embed'] = embed
    z = _encoder(self.variant, self.drop_path, self.dtype)(x, token, train=train)
    feats.update(cls=z[:, 0], meta=z[:, -1])
    if self.aux_head:
      # The backbone's own classifier, never trained (quirk Q1); only CDMAD's bias reads it.
      feats['aux_logits'] = vit.torch_dense(self.num_classes, width, self.dtype,
                                            'aux_head')(z[:, 0])
    if return_tokens:
      feats['tokens'] = z
    return _head(self.num_classes, width, self.dtype)(z[:, 0]), feats


class StudentBranch(nn.Module):
  """Image-only student f_S(x), with the placeholder token p_S iff `placeholder` (METHOD 2.4)."""
  variant: str
  num_classes: int
  drop_path: float = 0.0
  placeholder: bool = True
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False,
               return_tokens: bool = False) -> tuple[jax.Array, Feats]:
    width = vit.get_variant(self.variant)['width']
    token = None
    if self.placeholder:
      p_s = self.param('placeholder', _token_init, (1, 1, width))
      token = jnp.broadcast_to(p_s, (x.shape[0], 1, width))
    z = _encoder(self.variant, self.drop_path, self.dtype)(x, token, train=train)
    # Without the placeholder the last token is the last patch token (the original's Q3);
    # it only feeds a zero distillation loss then.
    feats = {'cls': z[:, 0], 'meta': z[:, -1]}
    if return_tokens:
      feats['tokens'] = z
    return _head(self.num_classes, width, self.dtype)(z[:, 0]), feats


class STSSLModel(nn.Module):
  """Teacher and student in one module and one param tree.

  Attributes:
    variant: name in `vit.VARIANTS` (both backbones).
    num_classes: C.
    drop_path: maximum stochastic-depth rate (both backbones).
    placeholder: whether the student appends the learned placeholder token p_S (distillation on).
    dtype: compute dtype (None: follow inputs and params).
    aux_head: also build the teacher backbone's own (untrained) classifier,
      params['teacher']['aux_head'] (only STSSL-CDMAD's released bias reads it, METHOD 7.5).
    with_student: build the student; False for `st_supervised` (teacher branch alone).
    meta_encoding: the metadata encoder's featurizer, a kind in `meta_encoder.ENCODINGS`
      ('linear': the released model).
    meta_encoding_params: that kind's params (None: its defaults).
  """
  variant: str
  num_classes: int
  drop_path: float = 0.0
  placeholder: bool = True
  dtype: Optional[Dtype] = None
  aux_head: bool = False
  with_student: bool = True
  meta_encoding: str = 'linear'
  meta_encoding_params: Optional[Mapping[str, Any]] = None

  def setup(self):
    # Explicit names give the tree keys 'teacher'/'student' without clashing with the methods.
    self.teacher_branch = TeacherBranch(self.variant, self.num_classes, self.drop_path,
                                        self.dtype, self.aux_head, self.meta_encoding,
                                        self.meta_encoding_params, name='teacher')
    if self.with_student:
      self.student_branch = StudentBranch(self.variant, self.num_classes, self.drop_path,
                                          self.placeholder, self.dtype, name='student')

  def teacher(self, x: jax.Array, meta: Optional[jax.Array], train: bool = False,
              return_tokens: bool = False) -> tuple[jax.Array, Feats]:
    """Teacher forward.

    Args:
      x: [B, H, W, C] images.
      meta: [B, 4] encoded metadata (`stssl_jax.metadata.encode`), or None to leave the
        metadata token
        out (CDMAD's blank-image bias; then feats['meta'] is the last patch token).
      train: enables drop-path (needs the 'dropout' rng when drop_path > 0).
      return_tokens: also return feats['tokens'] (diagnostics / parity tests).

    Returns:
      logits [B, C] of the joint head; feats {'cls': [B, D], 'meta': [B, D] final-LN output
      of the metadata token, 'meta_embed': [B, D] encoder output E(m)} (+ 'aux_logits'
      [B, C] with the aux head, + 'tokens' [B, N+2, D]).
    """
    return self.teacher_branch(x, meta, train, return_tokens)

  def student(self, x: jax.Array, train: bool = False,
              return_tokens: bool = False) -> tuple[jax.Array, Feats]:
    """Student forward.

    Args:
      x: [B, H, W, C] images.
      train: enables drop-path (needs the 'dropout' rng when drop_path > 0).
      return_tokens: also return feats['tokens'] (diagnostics / parity tests).

    Returns:
      logits [B, C]; feats {'cls': [B, D], 'meta': [B, D] last token (the placeholder's output
      when present)} (+ 'tokens' [B, L, D]).
    """
    return self.student_branch(x, train, return_tokens)

  def __call__(self, x: jax.Array, meta: jax.Array, train: bool = False):
    """Runs both branches (used by `init`). Returns ((t_logits, t_feats), (s_logits, s_feats)),
    the student part None without a student."""
    return self.teacher(x, meta, train), (self.student(x, train) if self.with_student else None)


_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16,
           'float64': jnp.float64}


# Config field -> featurizer param, per encoding kind (configs/default.py, model.meta_*).
_ENCODING_FIELDS = {'linear': {}, 'sphere': {},
                    'multiscale': {'meta_num_scales': 'num_scales', 'meta_min_freq': 'min_freq'},
                    'sph_harmonics': {'meta_sh_degree': 'degree'}}


def meta_encoding_params(config) -> tuple[str, dict[str, Any]]:
  """(kind, params) of the teacher's metadata featurizer from `config.model`.

  Raises:
    ValueError: unknown `model.meta_encoding` (the message lists the known kinds).
  """
  kind = config.model.get('meta_encoding', 'linear')
  if kind not in _ENCODING_FIELDS:
    raise ValueError(f'config.model.meta_encoding must be one of {meta_encoder.ENCODINGS}, '
                     'got '
                     f'{kind!r}')
  params = {p: config.model[f] for f, p in _ENCODING_FIELDS[kind].items() if f in config.model}
  meta_encoder.num_features(kind, **params)  # Validates the values (e.g. degree >= 0).
  return kind, params


def init_inputs(config, algo=None) -> tuple:
  """Dummy inputs for `model.init`: (image [1, S, S, C],) or, with metadata, (image, meta
  [1, META_DIM]); zeros, float32."""
  algo = algo or algorithms.get(config.algorithm)
  s = config.data.image_size
  x = jnp.zeros((1, s, s, config.data.num_channels), jnp.float32)
  return (x, jnp.zeros((1, metadata.META_DIM), jnp.float32)) if algo.uses_meta else (x,)


def build_model(config) -> nn.Module:
  """Builds the model for `config.algorithm`.

  `supervised`, `fixmatch`, ... (no `stssl_` prefix) give a `PlainViT`; `stssl_*` give an
  `STSSLModel` whose student has the placeholder iff `config.distill != 'none'` and
  `config.lambda_d > 0` (METHOD 2.4), and whose teacher has the aux head for STSSL-CDMAD with
  `cdmad.bias_head = 'quirk'`. `st_supervised` gives the teacher branch alone (METHOD 2.6).

  The teacher's metadata featurizer is `config.model.meta_encoding` with its params from
  `meta_encoding_params` (missing from older configs: the released 'linear').

  Args:
    config: ConfigDict with model.variant, model.num_classes, model.drop_path, dtype,
      algorithm, distill, lambda_d (and cdmad.bias_head for stssl_cdmad).

  Returns:
    An unbound flax module.
  """
  dtype = _DTYPES[config.dtype] if isinstance(config.dtype, str) else config.dtype
  kwargs = dict(variant=vit.variant_of(config.model), num_classes=config.model.num_classes,
                drop_path=config.model.drop_path, dtype=dtype)
  algo = algorithms.get(config.algorithm)
  if not algo.uses_meta:
    return PlainViT(**kwargs)
  kind, params = meta_encoding_params(config)
  kwargs.update(meta_encoding=kind, meta_encoding_params=params)
  if algo.teacher_only:
    return STSSLModel(placeholder=False, with_student=False, **kwargs)
  return STSSLModel(placeholder=algo.placeholder(config), aux_head=algo.aux_head(config),
                    **kwargs)
