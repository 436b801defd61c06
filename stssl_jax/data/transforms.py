"""Which image transforms a dataset's records get, bundled for the input pipeline.

The record image dtype decides: uint8 RGB -> the EuroSAT transforms (`augment`, METHOD
3.2-3.3); uint16 with any number of bands -> the multi-band transforms (`augment_ms`,
METHOD 3.4-3.5) with the dataset's band statistics and the configured RandAugment policy.
"""

import dataclasses
import functools
from typing import Any, Callable, Mapping, Optional

import ml_collections
import numpy as np

from stssl_jax.data import augment
from stssl_jax.data import augment_ms


@dataclasses.dataclass(frozen=True)
class ImageTransforms:
  """The image functions of one dataset kind (picklable, for grain worker processes).

  Attributes:
    dtype: record image dtype these transforms accept.
    channels: C, the bands of every record image.
    prepare: record image -> the image cached per record.
    weak: (prepared, rng) -> weak view; views stack into `normalize`'s input.
    strong: (prepared, rng) -> strong view.
    normalize: stacked views [B, S, S, C] -> float32 network input.
    eval_image: record image -> float32 [S, S, C] network input.
    prepared_bytes: bytes of one prepared image (for the cache budget).
  """
  dtype: np.dtype
  channels: int
  prepare: Callable[[np.ndarray], np.ndarray]
  weak: Callable[[np.ndarray, np.random.Generator], np.ndarray]
  strong: Callable[[np.ndarray, np.random.Generator], np.ndarray]
  normalize: Callable[[np.ndarray], np.ndarray]
  eval_image: Callable[[np.ndarray], np.ndarray]
  prepared_bytes: int

  def image_of(self, record: Mapping[str, Any]) -> np.ndarray:
    """The record's image [H, W, C], checked against the first record's dtype and C."""
    image = np.asarray(record['image'])
    if image.dtype != self.dtype or image.ndim != 3 or image.shape[-1] != self.channels:
      raise ValueError(f'Expected {self.dtype} [H, W, {self.channels}] images like the first '
                       f'record, got {image.dtype}{list(image.shape)} '
                       f'({record.get("filename", "?")})')
    return image


def _hwc_view(view, v, rng, **kw):
  """augment_ms view (channel-first) -> float32 [S, S, C] for batching."""
  return augment_ms.to_hwc(view(v, rng, **kw))


def _ms_eval(image, mean, std, size):
  """Record image -> float32 [S, S, C] network input (prepare, normalise)."""
  return augment_ms.normalize(augment_ms.to_hwc(augment_ms.prepare(image, mean, std, size)))


def for_records(config: ml_collections.ConfigDict, sample: np.ndarray,
                info: Optional[Mapping[str, Any]] = None) -> ImageTransforms:
  """Picks the transforms for records whose images look like `sample`.

  Args:
    config: reads data.{image_size, crop_padding, randaugment_n, num_channels, ms_policy,
      ms_posterize_quirk, ms_solarize_add_threshold, ms_saturation}.
    sample: one record image [H, W, C]: uint8 RGB (EuroSAT) or uint16 (multi-band).
    info: dataset info; uint16 data needs its band_mean / band_std (raw units).

  Returns:
    ImageTransforms.

  Raises:
    ValueError: when C differs from config.data.num_channels (naming both), or the dtype
      or band statistics do not fit.
  """
  data = config.data
  sample = np.asarray(sample)
  c = sample.shape[-1]
  if c != data.num_channels:
    raise ValueError(f'config.data.num_channels={data.num_channels} (the model input) but '
                     f'the records of {data.name!r} have C={c} bands')
  size, pad = data.image_size, data.crop_padding
  if sample.dtype == np.uint8:
    if c != 3:
      raise ValueError(f'The EuroSAT (uint8) transforms need RGB images, got C={c}')
    return ImageTransforms(
        np.dtype(np.uint8), 3, functools.partial(augment.resize, size=size),
        functools.partial(augment.weak, padding=pad),
        functools.partial(augment.strong, padding=pad, n_ops=data.randaugment_n),
        augment.normalize, functools.partial(augment.eval_view, size=size),
        size * size * 3)
  if sample.dtype != np.uint16:
    raise ValueError(f'Record images must be uint8 (RGB) or uint16 (bands), '
                     f'got {sample.dtype}')
  mean, std = (info or {}).get('band_mean'), (info or {}).get('band_std')
  if mean is None or std is None or len(mean) != c or len(std) != c:
    raise ValueError(f'uint16 images need {c} band_mean/band_std values from the dataset '
                     f'info, got {mean} / {std}')
  threshold = data.ms_solarize_add_threshold
  policy = augment_ms.make_policy(data.ms_policy, data.randaugment_n, data.ms_posterize_quirk,
                                  None if threshold < 0 else threshold, data.ms_saturation)
  mean, std = tuple(map(float, mean)), tuple(map(float, std))
  return ImageTransforms(
      np.dtype(np.uint16), c,
      functools.partial(augment_ms.prepare, mean=mean, std=std, size=size),
      functools.partial(_hwc_view, augment_ms.weak, padding=pad, size=size),
      functools.partial(_hwc_view, augment_ms.strong, padding=pad, size=size, policy=policy),
      augment_ms.normalize, functools.partial(_ms_eval, mean=mean, std=std, size=size),
      size * size * c * 2)
