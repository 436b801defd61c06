"""Geographic hold-out regions for data_prep (the metadata-shift evaluation, issue 7).

A held-out region is removed from every training and test split and written as its own
split `heldout`, so training never sees it and evaluation reports in-region (`test`) and
out-of-region (`heldout`) metrics separately.
"""

from typing import Optional, Sequence

import numpy as np


def parse_box(text: Optional[str]) -> Optional[tuple[float, float, float, float]]:
  """'lat_min,lat_max,lon_min,lon_max' -> tuple, validated; None passes through."""
  if not text:
    return None
  try:
    box = tuple(float(v) for v in text.split(','))
  except ValueError as e:
    raise ValueError(f'--holdout_box {text!r}: expected lat_min,lat_max,lon_min,lon_max') from e
  if len(box) != 4 or not (box[0] < box[1] and box[2] < box[3]):
    raise ValueError(f'--holdout_box {text!r}: expected lat_min<lat_max,lon_min<lon_max')
  return box


def country_codes(lat: Sequence[float], lon: Sequence[float]) -> list[str]:
  """ISO country code of the nearest populated place (offline, `reverse_geocoder`)."""
  try:
    import reverse_geocoder  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError('--holdout_countries needs the offline geocoder: '
                     'pip install "stssl-jax[geo]" (reverse_geocoder)') from e
  hits = reverse_geocoder.search(list(zip(map(float, lat), map(float, lon))), mode=1,
                                 verbose=False)
  return [h['cc'] for h in hits]


def in_region(lat, lon, box=None, countries: Sequence[str] = ()) -> np.ndarray:
  """Bool [N]: inside the lat/lon box or in one of the countries (ISO alpha-2 codes)."""
  lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
  held = np.zeros(lat.shape, bool)
  if box is not None:
    held |= (lat >= box[0]) & (lat <= box[1]) & (lon >= box[2]) & (lon <= box[3])
  if countries:
    wanted = {c.strip().upper() for c in countries}
    held |= np.isin(np.array(country_codes(lat, lon)), list(wanted))
  return held
