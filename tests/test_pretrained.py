"""Loading the original's pretrained ViT checkpoints (METHOD 2.2) from local files."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import test as test_config
from stssl_jax import train
from stssl_jax.models import convert, posemb, stssl as models
from tests.test_train_step import build

torch = pytest.importorskip('torch')  # Installed by the [test] extra; .pth needs it.


@pytest.mark.parametrize('g_in,g_out', [(14, 8), (4, 6), (16, 16), (7, 3)])
def test_bicubic_resize_matches_pytorch(g_in, g_out):
  rng = np.random.default_rng(g_in * 100 + g_out)
  grid = rng.normal(size=(g_in, g_in, 5))
  ours = posemb.resize_grid(grid, (g_out, g_out))
  t = torch.from_numpy(grid.transpose(2, 0, 1)[None])
  want = torch.nn.functional.interpolate(t, size=(g_out, g_out), mode='bicubic',
                                         align_corners=False)[0].numpy().transpose(1, 2, 0)
  np.testing.assert_allclose(ours, want, rtol=0, atol=1e-12)


def test_pth_checkpoint_in_original_format(tmp_path):
  """ViT trained at 56 px (14x14 grid, 1000 classes) -> STSSL model at 32 px (8x8 grid)."""
  src_model = models.PlainViT(variant='test', num_classes=1000)
  src = jax.device_get(src_model.init(jax.random.PRNGKey(3), jnp.zeros((1, 56, 56, 3)))['params'])
  sd = convert.to_torch_vit(src)
  assert sd['pos_embed'].shape == (1, 197, 32) and sd['head.weight'].shape == (1000, 32)
  path = tmp_path / 'vit_small_patch4_56_mlp_im_1k_56.pth'
  # The USB release layout: a pickle whose "model" entry holds a DDP-prefixed state dict.
  torch.save({'model': {'module.' + k: torch.from_numpy(np.array(v)) for k, v in sd.items()},
              'optimizer': {}, 'it': 0}, path)

  config = test_config.get_config('stssl_fixmatch')
  config.data.image_size = 32
  state, _, _ = build(config)
  new = train._init_from(state, str(path))
  pos_t = torch.from_numpy(np.array(sd['pos_embed'][0, 1:]).reshape(14, 14, 32).transpose(2, 0, 1))
  want_grid = torch.nn.functional.interpolate(pos_t[None], size=(8, 8), mode='bicubic',
                                              align_corners=False)[0].numpy()
  want_pos = np.concatenate([sd['pos_embed'][:, :1],
                             want_grid.transpose(1, 2, 0).reshape(1, 64, 32)], axis=1)
  for branch in ('teacher', 'student'):
    got = jax.device_get(new.params[branch]['backbone'])
    np.testing.assert_allclose(got['pos_embed'], want_pos, rtol=0, atol=1e-6)
    for key in ('cls', 'patch_embed', 'block_0', 'block_1', 'norm'):
      for a, b in zip(jax.tree_util.tree_leaves(src['backbone'][key]),
                      jax.tree_util.tree_leaves(got[key])):
        np.testing.assert_array_equal(a, b)
    # The 1000-way head is skipped; metadata parts keep their fresh init.
    np.testing.assert_array_equal(new.params[branch]['head']['kernel'],
                                  state.params[branch]['head']['kernel'])
  np.testing.assert_array_equal(new.params['teacher']['meta_token'], state.params['teacher']['meta_token'])


def test_missing_or_unsupported_file_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='no_such.pth'):
    convert.read_state_dict(str(tmp_path / 'no_such.pth'))
  bad = tmp_path / 'weights.bin'
  bad.write_bytes(b'x')
  with pytest.raises(ValueError, match='unsupported file type'):
    convert.read_state_dict(str(bad))
