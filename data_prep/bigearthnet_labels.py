"""BigEarthNet-S2 v1.0 nomenclatures, the standard 43 -> 19 class mapping, and band constants.

Class index order is METHOD 3.4's (the order of the original authors' label tables), not the
alphabetical order of `bigearthnet_common` nor the CLC code order of the BigEarthNet JSONs.

The 43 -> 19 mapping is the one of the BigEarthNet 19-class nomenclature (Sumbul et al.,
"BigEarthNet-MM", IEEE GRSM 2021; `label_indices.json` of TU Berlin's
BigEarthNet-S2_19-classes_models, as reproduced in `bigearthnet_common.constants
.OLD2NEW_LABELS_DICT`). Eleven CLC classes have no 19-class counterpart (None below); a
patch whose labels are all among them has an all-zero 19-class target (the 57 patches of
the official list `patches_with_no_19_class_targets`).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

# METHOD 3.4, 43-class order.
LABELS43 = (
    'Mixed forest',
    'Coniferous forest',
    'Non-irrigated arable land',
    'Transitional woodland/shrub',
    'Broad-leaved forest',
    'Land principally occupied by agriculture, with significant areas of natural vegetation',
    'Complex cultivation patterns',
    'Pastures',
    'Water bodies',
    'Sea and ocean',
    'Discontinuous urban fabric',
    'Agro-forestry areas',
    'Peatbogs',
    'Permanently irrigated land',
    'Industrial or commercial units',
    'Natural grassland',
    'Olive groves',
    'Sclerophyllous vegetation',
    'Continuous urban fabric',
    'Water courses',
    'Vineyards',
    'Annual crops associated with permanent crops',
    'Inland marshes',
    'Moors and heathland',
    'Sport and leisure facilities',
    'Fruit trees and berry plantations',
    'Mineral extraction sites',
    'Rice fields',
    'Road and rail networks and associated land',
    'Bare rock',
    'Green urban areas',
    'Beaches, dunes, sands',
    'Sparsely vegetated areas',
    'Salt marshes',
    'Coastal lagoons',
    'Construction sites',
    'Estuaries',
    'Intertidal flats',
    'Airports',
    'Dump sites',
    'Port areas',
    'Salines',
    'Burnt areas',
)

# METHOD 3.4, 19-class order (METHOD abbreviates the 6th name; this is the full one).
LABELS19 = (
    'Mixed forest',
    'Coniferous forest',
    'Arable land',
    'Transitional woodland, shrub',
    'Broad-leaved forest',
    'Land principally occupied by agriculture, with significant areas of natural vegetation',
    'Complex cultivation patterns',
    'Pastures',
    'Inland waters',
    'Marine waters',
    'Urban fabric',
    'Agro-forestry areas',
    'Inland wetlands',
    'Industrial or commercial units',
    'Natural grassland and sparsely vegetated areas',
    'Permanent crops',
    'Moors, heathland and sclerophyllous vegetation',
    'Beaches, dunes, sands',
    'Coastal wetlands',
)

# 43-class name -> 19-class name (None: dropped in the 19-class nomenclature).
TO19 = {
    'Continuous urban fabric': 'Urban fabric',
    'Discontinuous urban fabric': 'Urban fabric',
    'Industrial or commercial units': 'Industrial or commercial units',
    'Non-irrigated arable land': 'Arable land',
    'Permanently irrigated land': 'Arable land',
    'Rice fields': 'Arable land',
    'Vineyards': 'Permanent crops',
    'Fruit trees and berry plantations': 'Permanent crops',
    'Olive groves': 'Permanent crops',
    'Annual crops associated with permanent crops': 'Permanent crops',
    'Pastures': 'Pastures',
    'Complex cultivation patterns': 'Complex cultivation patterns',
    LABELS43[5]: LABELS19[5],
    'Agro-forestry areas': 'Agro-forestry areas',
    'Broad-leaved forest': 'Broad-leaved forest',
    'Coniferous forest': 'Coniferous forest',
    'Mixed forest': 'Mixed forest',
    'Natural grassland': 'Natural grassland and sparsely vegetated areas',
    'Sparsely vegetated areas': 'Natural grassland and sparsely vegetated areas',
    'Moors and heathland': 'Moors, heathland and sclerophyllous vegetation',
    'Sclerophyllous vegetation': 'Moors, heathland and sclerophyllous vegetation',
    'Transitional woodland/shrub': 'Transitional woodland, shrub',
    'Beaches, dunes, sands': 'Beaches, dunes, sands',
    'Inland marshes': 'Inland wetlands',
    'Peatbogs': 'Inland wetlands',
    'Salt marshes': 'Coastal wetlands',
    'Salines': 'Coastal wetlands',
    'Water courses': 'Inland waters',
    'Water bodies': 'Inland waters',
    'Coastal lagoons': 'Marine waters',
    'Estuaries': 'Marine waters',
    'Sea and ocean': 'Marine waters',
    'Airports': None,
    'Bare rock': None,
    'Dump sites': None,
    'Port areas': None,
    'Road and rail networks and associated land': None,
    'Mineral extraction sites': None,
    'Construction sites': None,
    'Sport and leisure facilities': None,
    'Burnt areas': None,
    'Intertidal flats': None,
    'Green urban areas': None,
}

# [43] index of each 43-class label in LABELS19, -1 where dropped.
MAP43TO19 = np.array([LABELS19.index(TO19[n]) if TO19[n] else -1 for n in LABELS43], np.int64)

# Sentinel-2 L2A bands of a v1.0 patch folder, in BigEarthNet's order, with pixel sizes.
BANDS = ('B01', 'B02', 'B03', 'B04', 'B05', 'B06', 'B07', 'B08', 'B8A', 'B09', 'B11', 'B12')
RGB_BANDS = ('B04', 'B03', 'B02')  # METHOD 3.4: channel order R, G, B.
BAND_SIZE = {'B01': 20, 'B09': 20, 'B02': 120, 'B03': 120, 'B04': 120, 'B08': 120,
             'B05': 60, 'B06': 60, 'B07': 60, 'B8A': 60, 'B11': 60, 'B12': 60}
PATCH_SIZE = 120  # Pixels per side at 10 m; every band is resampled to it.

# Per-band (mean, std) in raw DN that the original pipeline scales with (METHOD 3.4 gives the
# RGB ones). Source: TU Berlin's bigearthnet-models-tf `BigEarthNet.py`, as reproduced in
# `bigearthnet_common.constants.BAND_STATS`; computed there over the whole archive.
BAND_STATS_ORIGINAL = {
    'B01': (340.76769064, 554.81258967), 'B02': (429.9430203, 572.41639287),
    'B03': (614.21682446, 582.87945694), 'B04': (590.23569706, 675.88746967),
    'B05': (950.68368468, 729.89827633), 'B06': (1792.46290469, 1096.01480586),
    'B07': (2075.46795189, 1273.45393088), 'B08': (2218.94553375, 1365.45589904),
    'B8A': (2266.46036911, 1356.13789355), 'B09': (2246.0605464, 1302.3292881),
    'B11': (1594.42694882, 1079.19066363), 'B12': (1009.32729131, 818.86747235),
}


def multi_hot(names: Iterable[str], source: str = '<labels>') -> tuple[np.ndarray, np.ndarray]:
  """Converts CORINE class names to the 43- and 19-class multi-hot vectors.

  Args:
    names: 43-class names as in a patch JSON's `labels`.
    source: file named in errors.

  Returns:
    (label43 uint8 [43], label19 uint8 [19]).

  Raises:
    ValueError: naming `source` and the unknown class name.
  """
  label43 = np.zeros(len(LABELS43), np.uint8)
  for n in names:
    if n not in TO19:
      raise ValueError(f'{source}: unknown BigEarthNet class {n!r}')
    label43[LABELS43.index(n)] = 1
  return label43, to19(label43)


def to19(label43: np.ndarray) -> np.ndarray:
  """Maps 43-class multi-hot vectors [..., 43] to 19-class ones [..., 19] (uint8)."""
  label43 = np.asarray(label43)
  out = np.zeros(label43.shape[:-1] + (len(LABELS19),), np.uint8)
  for i43, i19 in enumerate(MAP43TO19):
    if i19 >= 0:
      out[..., i19] |= label43[..., i43].astype(np.uint8)
  return out


def parse_bands(spec: str) -> tuple[str, ...]:
  """`rgb` -> (B04, B03, B02); `all` -> the 12 bands; else comma-separated band names.

  Raises:
    ValueError: naming the unknown or repeated band.
  """
  if spec == 'rgb':
    return RGB_BANDS
  if spec == 'all':
    return BANDS
  bands = tuple(b.strip().upper() for b in spec.split(',') if b.strip())
  for b in bands:
    if b not in BANDS:
      raise ValueError(f'--bands {spec!r}: unknown band {b!r}; expected rgb, all or names from '
                       f'{",".join(BANDS)}')
  if not bands or len(set(bands)) != len(bands):
    raise ValueError(f'--bands {spec!r}: expected a non-empty list of distinct bands')
  return bands


def original_stats(bands: Sequence[str]) -> tuple[list[float], list[float]]:
  """The original pipeline's per-band (mean [C], std [C]) in raw DN for `bands`."""
  return ([BAND_STATS_ORIGINAL[b][0] for b in bands], [BAND_STATS_ORIGINAL[b][1] for b in bands])
