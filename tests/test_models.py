"""Models: parameter counts by formula, float64 parity with the original, drop-path, build."""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from stssl_jax.models import convert
from stssl_jax.models import stssl
from stssl_jax.models import vit

_DIR = pathlib.Path(__file__).parent / 'fixtures' / 'parity'
# Fixture README section 7: forward outputs, features and tokens in float64.
_TOL = dict(atol=1e-11, rtol=1e-9)
# Input side per patch size: EuroSAT ViT-S/2 at 32, BigEarthNet ViT-S/16 at 128, fixtures at 16.
_IMAGE = {2: 32, 4: 32, 16: 128}


def _load(name):
  with np.load(_DIR / name) as data:
    return {k: data[k] for k in data.files}


def _nhwc(a):
  return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def _count(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def _vit_backbone_count(v, n_patches, in_ch=3):
  """Analytic parameter count of one ViTEncoder (no head)."""
  d, m = v['width'], v['mlp_dim']
  patch_embed = v['patch'] ** 2 * in_ch * d + d  # conv kernel + bias
  tokens = d + (n_patches + 1) * d  # cls + pos_embed
  block = (2 * 2 * d  # norm1, norm2 (scale, bias)
           + d * 3 * d + 3 * d  # fused qkv
           + d * d + d  # proj
           + d * m + m  # fc1
           + m * d + d)  # fc2
  return patch_embed + tokens + v['depth'] * block + 2 * d  # + final norm


def _plain_count(v, n_patches, c):
  return _vit_backbone_count(v, n_patches) + v['width'] * c + c


def _stssl_count(v, n_patches, c, placeholder):
  d = v['width']
  encoder = 4 * d + d + d * d + d  # Linear(4, D), Linear(D, D)
  tokens = d + (d if placeholder else 0)  # meta_token p_T (+ placeholder p_S)
  return 2 * _plain_count(v, n_patches, c) + encoder + tokens


def _abstract_params(model, image, *args):
  inputs = [jax.ShapeDtypeStruct((1, image, image, 3), jnp.float32)]
  if isinstance(model, stssl.STSSLModel):
    inputs.append(jax.ShapeDtypeStruct((1, 4), jnp.float32))
  return jax.eval_shape(lambda k, *a: model.init(k, *a), jax.random.key(0), *inputs)['params']


def _init(model, key, *inputs):
  """Jitted init: one compile (kept by the persistent cache) instead of op-by-op dispatch."""
  return jax.jit(model.init)(key, *inputs)['params']


def _apply(model, params, *inputs, **kwargs):
  """Jitted `model.apply({'params': params}, *inputs, **kwargs)`; kwargs are static."""
  return jax.jit(functools.partial(model.apply, **kwargs))({'params': params}, *inputs)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def test_registry():
  for name in ('Ti/2', 'S/2', 'B/2', 'Ti/16', 'S/16', 'B/16', 'test'):
    assert name in vit.VARIANTS
  assert vit.get_variant('S/2') == dict(patch=2, width=384, depth=12, heads=6, mlp_dim=1536)
  assert vit.get_variant('B/16') == dict(patch=16, width=768, depth=12, heads=12, mlp_dim=3072)
  assert vit.get_variant('Ti/16') == dict(patch=16, width=192, depth=12, heads=3, mlp_dim=768)
  assert vit.get_variant('test') == dict(patch=4, width=32, depth=2, heads=2, mlp_dim=128)
  with pytest.raises(KeyError, match='S/3'):
    vit.get_variant('S/3')


def test_paper_vit_s2_counts():
  v = vit.get_variant('S/2')
  n = (32 // 2) ** 2  # 256 patches
  plain = _count(_abstract_params(stssl.PlainViT('S/2', 10), 32))
  assert plain == _plain_count(v, n, 10)
  assert 21.3e6 < plain < 21.5e6  # the usual "ViT-S ~ 21-22M" (256 patches add 98k pos_embed)
  model = stssl.STSSLModel('S/2', 10, drop_path=0.2, placeholder=True)
  params = _abstract_params(model, 32)
  assert _count(params) == _stssl_count(v, n, 10, placeholder=True)
  assert _count(params['teacher']['meta_encoder']) == 4 * 384 + 384 + 384 * 384 + 384
  assert _count(params['student']) == plain + 384  # student = plain ViT + placeholder
  no_placeholder = _abstract_params(stssl.STSSLModel('S/2', 10, placeholder=False), 32)
  assert _count(no_placeholder) == _stssl_count(v, n, 10, placeholder=False)


@pytest.mark.parametrize('name', sorted(vit.VARIANTS))
def test_every_variant_count(name):
  v = vit.get_variant(name)
  image = 16 if name == 'test' else _IMAGE[v['patch']]
  n = (image // v['patch']) ** 2
  assert _count(_abstract_params(stssl.PlainViT(name, 7), image)) == _plain_count(v, n, 7)
  params = _abstract_params(stssl.STSSLModel(name, 7, placeholder=True), image)
  assert _count(params) == _stssl_count(v, n, 7, placeholder=True)


def test_test_variant_tree_layout():
  params = _abstract_params(stssl.STSSLModel('test', 10, placeholder=True), 16)
  shapes = jax.tree.map(lambda a: a.shape, params)
  assert sorted(shapes) == ['student', 'teacher']
  assert sorted(shapes['teacher']) == ['backbone', 'head', 'meta_encoder', 'meta_token']
  assert sorted(shapes['student']) == ['backbone', 'head', 'placeholder']
  assert shapes['teacher']['meta_token'] == shapes['student']['placeholder'] == (1, 1, 32)
  assert shapes['teacher']['head'] == {'kernel': (32, 10), 'bias': (10,)}
  bb = shapes['student']['backbone']
  assert sorted(bb) == ['block_0', 'block_1', 'cls', 'norm', 'patch_embed', 'pos_embed']
  assert bb['cls'] == (1, 1, 32) and bb['pos_embed'] == (1, 17, 32)
  assert bb['patch_embed'] == {'kernel': (4, 4, 3, 32), 'bias': (32,)}
  assert bb['block_0']['attn']['qkv'] == {'kernel': (32, 96), 'bias': (96,)}
  assert bb['block_0']['mlp']['fc1'] == {'kernel': (32, 128), 'bias': (128,)}
  # The original has 57,832 scalars including two unused aux heads (10 x 32 + 10 each).
  assert _count(params) == 57_832 - 2 * 330


def test_stssl_forward_parity(x64):
  data = _load('stssl_fixmatch_single.npz')
  state = {k[len('param/'):]: v for k, v in data.items() if k.startswith('param/')}
  params, report = convert.from_torch_stssl(state, return_report=True)
  assert sorted(report.ignored) == sorted(f'{b}_backbone.head.{w}' for b in ('joint', 'student')
                                          for w in ('weight', 'bias'))
  assert not report.unknown and not report.missing
  inp = lambda k: data[f'input/0/{k}']
  out = lambda k: data[f'out/0/{k}']
  model = stssl.STSSLModel('test', 10, placeholder=True)
  x = np.concatenate([_nhwc(inp('x_lb')), _nhwc(inp('x_ulb_w')), _nhwc(inp('x_ulb_s'))])
  m = np.concatenate([inp('metainfo_lb'), inp('metainfo_ulb'), inp('metainfo_ulb')])
  logits, feats = _apply(model, params, x, m, train=True, method=model.teacher,
                         return_tokens=True)
  assert logits.dtype == jnp.float64
  segs = ('lb', 'ulb_w', 'ulb_s')
  np.testing.assert_allclose(logits, np.concatenate([out(f'teacher_logits_{s}') for s in segs]),
                             **_TOL)
  np.testing.assert_allclose(feats['meta'],
                             np.concatenate([out(f'teacher_meta_feat_{s}') for s in segs]), **_TOL)
  np.testing.assert_allclose(feats['cls'], out('teacher_cls_feat'), **_TOL)
  np.testing.assert_allclose(feats['meta_embed'], out('metainfo_embed'), **_TOL)
  np.testing.assert_allclose(feats['tokens'], out('teacher_tokens'), **_TOL)

  xs = np.concatenate([_nhwc(inp('x_lb')), _nhwc(inp('x_ulb_s'))])
  logits, feats = _apply(model, params, xs, train=True, method=model.student)
  segs = ('lb', 'ulb_s')
  np.testing.assert_allclose(logits, np.concatenate([out(f'student_logits_{s}') for s in segs]),
                             **_TOL)
  np.testing.assert_allclose(feats['meta'],
                             np.concatenate([out(f'student_meta_feat_{s}') for s in segs]), **_TOL)
  np.testing.assert_allclose(feats['cls'], out('student_cls_feat'), **_TOL)


def test_plain_vit_forward_parity(x64):
  data = _load('fixmatch_single.npz')
  params = convert.from_torch_vit({k[6:]: v for k, v in data.items() if k.startswith('param/')})
  x = np.concatenate([_nhwc(data[f'input/0/{s}']) for s in ('x_lb', 'x_ulb_w', 'x_ulb_s')])
  logits, feats = _apply(stssl.PlainViT('test', 10), params, x, train=True)
  ref = np.concatenate([data[f'out/0/logits_{s}'] for s in ('lb', 'ulb_w', 'ulb_s')])
  np.testing.assert_allclose(logits, ref, **_TOL)
  np.testing.assert_allclose(feats['cls'], data['out/0/cls_feat'], **_TOL)


def test_student_without_placeholder_parity(x64):
  data = _load('stssl_fixmatch_nodistill.npz')
  state = {k[6:]: v for k, v in data.items() if k.startswith('param/student')}
  params, report = convert.from_torch_stssl(state, placeholder=False, strict=False,
                                            return_report=True)
  assert report.ignored == ['student_backbone.metainfo_pos_embed',
                            'student_backbone.head.weight', 'student_backbone.head.bias']
  assert all(name.startswith(('joint', 'metainfo_enc')) for name in report.missing)
  assert sorted(params) == ['student'] and 'placeholder' not in params['student']
  xs = np.concatenate([_nhwc(data['input/0/x_lb']), _nhwc(data['input/0/x_ulb_s'])])
  model = stssl.STSSLModel('test', 10, placeholder=False)
  # The student runs with only its own subtree: the teacher is never touched.
  logits, feats = _apply(model, params, xs, method=model.student, return_tokens=True)
  assert feats['tokens'].shape == (12, 17, 32)  # no extra token
  out = lambda k: np.concatenate([data[f'out/0/{k}_{s}'] for s in ('lb', 'ulb_s')])
  np.testing.assert_allclose(logits, out('student_logits'), **_TOL)
  np.testing.assert_allclose(feats['meta'], out('student_meta_feat'), **_TOL)  # last patch token
  np.testing.assert_allclose(feats['cls'], data['out/0/student_cls_feat'], **_TOL)


def test_convert_roundtrip_and_errors():
  data = _load('stssl_fixmatch_single.npz')
  state = {k[6:]: v for k, v in data.items() if k.startswith('param/')}
  params = convert.from_torch_stssl({'module.' + k: v for k, v in state.items()})
  back = convert.to_torch_stssl(params)
  assert set(state) - set(back) == {f'{b}_backbone.head.{w}' for b in ('joint', 'student')
                                    for w in ('weight', 'bias')}
  for name, value in back.items():
    np.testing.assert_array_equal(value, state[name], err_msg=name)
  np.testing.assert_array_equal(params['teacher']['backbone']['block_1']['attn']['qkv']['kernel'],
                                state['joint_backbone.blocks.1.attn.qkv.weight'].T)
  conv = state['student_backbone.patch_embed.proj.weight']  # OIHW
  np.testing.assert_array_equal(params['student']['backbone']['patch_embed']['kernel'],
                                conv.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params['teacher']['meta_token'],
                                state['joint_backbone.metainfo_pos_embed'])
  with pytest.raises(ValueError, match='unknown .*joint_backbone.fc_norm.weight'):
    convert.from_torch_stssl({**state, 'joint_backbone.fc_norm.weight': np.zeros(32)})
  missing = dict(state)
  del missing['joint_head.bias']
  with pytest.raises(ValueError, match='missing .*joint_head.bias'):
    convert.from_torch_stssl(missing)
  as_f32 = convert.from_torch_stssl(state, dtype=np.float32)
  assert {a.dtype for a in jax.tree.leaves(as_f32)} == {np.dtype(np.float32)}


def test_load_pretrained_timm_checkpoint():
  data = _load('fixmatch_single.npz')
  ckpt = {k[6:]: v.astype(np.float32) for k, v in data.items() if k.startswith('param/')}
  ckpt['head.weight'] = np.zeros((1000, 32), np.float32)  # ImageNet-1k classifier
  ckpt['head.bias'] = np.zeros((1000,), np.float32)
  ckpt = {'module.' + k: v for k, v in ckpt.items()}
  x, m = jnp.zeros((1, 16, 16, 3)), jnp.zeros((1, 4))

  model = stssl.STSSLModel('test', 10, placeholder=True)
  init = _init(model, jax.random.key(0), x, m)
  params, report = convert.load_pretrained(init, ckpt, return_report=True)
  ref = convert.from_torch_vit({k[7:]: v for k, v in ckpt.items()}, strict=False)['backbone']
  for branch in ('teacher', 'student'):  # both backbones start from the same checkpoint
    jax.tree.map(np.testing.assert_array_equal, params[branch]['backbone'], ref)
    np.testing.assert_array_equal(params[branch]['head']['kernel'], init[branch]['head']['kernel'])
  np.testing.assert_array_equal(params['teacher']['meta_token'], init['teacher']['meta_token'])
  assert report.ignored == ['head.weight', 'head.bias'] and not report.missing
  assert jax.tree.map(lambda a: a.dtype, params) == jax.tree.map(lambda a: a.dtype, init)

  plain_init = _init(stssl.PlainViT('test', 10), jax.random.key(1), x)
  params, report = convert.load_pretrained(plain_init, ckpt, return_report=True)
  assert report.mismatched == [
      'head.weight: checkpoint shape (1000, 32) (as (32, 1000)) vs param shape (32, 10) '
      'at head/kernel',
      'head.bias: checkpoint shape (1000,) (as (1000,)) vs param shape (10,) at head/bias']
  np.testing.assert_array_equal(params['head']['kernel'], plain_init['head']['kernel'])
  jax.tree.map(np.testing.assert_array_equal, params['backbone'], ref)

  # A 32x32 target has an 8x8 grid: pos_embed must be resized offline first.
  big_init = _abstract_params(stssl.PlainViT('test', 10), 32)
  with pytest.raises(ValueError, match=r'pos_embed: checkpoint shape \(1, 17, 32\) .* '
                                      r'vs param shape \(1, 65, 32\)'):
    convert.load_pretrained(big_init, ckpt)


def test_drop_path_function():
  x = jnp.ones((4000, 3, 2))
  y = vit.drop_path(x, 0.25, jax.random.key(0))
  per_sample = y.reshape(4000, -1)
  assert bool(jnp.all(per_sample == per_sample[:, :1]))  # whole samples are dropped or kept
  values = set(np.unique(np.asarray(per_sample)).tolist())
  assert values == {0.0, np.float32(1 / 0.75)}
  assert abs(float(jnp.mean(per_sample[:, 0] == 0)) - 0.25) < 0.03


def test_drop_path_in_model():
  enc = vit.ViTEncoder(**vit.get_variant('test'), drop_path=0.5)  # block 1: rate 0.5
  x = jax.random.normal(jax.random.key(0), (32, 16, 16, 3))
  params = _init(enc, jax.random.key(1), x)
  evaluate = jax.jit(lambda p: enc.apply({'params': p}, x))  # no rng needed in eval mode
  eval_out = evaluate(params)
  np.testing.assert_array_equal(eval_out, evaluate(params))
  no_dp = vit.ViTEncoder(**vit.get_variant('test'), drop_path=0.0)
  np.testing.assert_array_equal(eval_out, _apply(no_dp, params, x))
  np.testing.assert_array_equal(eval_out, _apply(no_dp, params, x, train=True))

  train_fn = jax.jit(lambda p, key: enc.apply({'params': p}, x, train=True, rngs={'dropout': key}))
  train = lambda key: train_fn(params, key)
  out = train(jax.random.key(2))
  np.testing.assert_array_equal(out, train(jax.random.key(2)))
  assert not np.allclose(out, eval_out)
  # Each sample's block-1 branches are either dropped (x0) or kept and scaled (x2). Scaling
  # proj / fc2 params emulates that exactly in eval mode, so every row must equal one combo.
  def combo(a, b):
    p = jax.tree.map(lambda t: t, params)
    p['block_1']['attn']['proj'] = jax.tree.map(lambda t: t * a, p['block_1']['attn']['proj'])
    p['block_1']['mlp']['fc2'] = jax.tree.map(lambda t: t * b, p['block_1']['mlp']['fc2'])
    return np.asarray(evaluate(p))
  combos = {(a, b): combo(a, b) for a in (0.0, 2.0) for b in (0.0, 2.0)}
  seen = set()
  for i in range(x.shape[0]):
    match = [k for k, c in combos.items() if np.allclose(out[i], c[i], atol=1e-5, rtol=1e-5)]
    assert len(match) == 1, i
    seen.add(match[0])
  assert seen == set(combos)  # 32 samples: all four keep/drop patterns occur


def test_dtypes():
  x, m = jnp.ones((2, 16, 16, 3)), jnp.ones((2, 4))
  model = stssl.STSSLModel('test', 10, dtype=jnp.bfloat16)
  params = _init(model, jax.random.key(0), x, m)
  assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
  logits, feats = _apply(model, params, x, m, method=model.teacher)
  assert logits.dtype == jnp.bfloat16 and feats['meta'].shape == (2, 32)
  logits, _ = _apply(stssl.STSSLModel('test', 10), params, x, method=stssl.STSSLModel.student)
  assert logits.dtype == jnp.float32


def test_build_model():
  config = default.get_config()
  config.model.variant = 'test'
  model = stssl.build_model(config)
  assert isinstance(model, stssl.STSSLModel) and model.placeholder
  assert model.dtype == jnp.float32 and model.drop_path == 0.2 and model.num_classes == 10
  config.distill = 'none'
  assert not stssl.build_model(config).placeholder
  config.distill, config.lambda_d = 'mse', 0.0
  assert not stssl.build_model(config).placeholder
  for algorithm in ('supervised', 'fixmatch'):
    config.algorithm = algorithm
    assert isinstance(stssl.build_model(config), stssl.PlainViT)
  config.algorithm = 'st_supervised'  # The teacher branch alone (METHOD 2.6).
  model = stssl.build_model(config)
  assert isinstance(model, stssl.STSSLModel) and not model.with_student
  config.algorithm, config.cdmad.bias_head = 'stssl_cdmad', 'quirk'
  assert stssl.build_model(config).aux_head  # The released bias reads the aux head.
  config.cdmad.bias_head = 'joint_head'
  assert not stssl.build_model(config).aux_head
