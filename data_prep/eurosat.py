r"""Raw EuroSAT (RGB JPEG folders or 13-band GeoTIFFs) + coordinates -> TFDS ArrayRecord dataset.

Prepare the bundled sample:

  python -m data_prep.eurosat --images data/eurosat_sample/2750 \
      --coords data/eurosat_sample/coords.csv --out prepared

Full EuroSAT RGB (official zip extracted to raw/, which holds `2750/`):

  python -m data_prep.eurosat --images raw --coords eurosat_latlon.csv --out prepared

EuroSAT MS GeoTIFFs (lat/lon of each patch centre computed from its georeferencing):

  python -m data_prep.eurosat --images EuroSAT_MS --out prepared

Splits written (METHOD 3.1): `train` (per class, the first floor(0.8 n_c) files in string
order; the unlabeled pool, labeled images included), `test` (the rest) and, for each n in
--num_labels, `train_lb_{n}`: the class-balanced labeled subset, in draw order, whose records
are copies of `train` records with `index` = their position in `train`.
"""

from __future__ import annotations

import argparse
import csv
import pathlib
import sys
import warnings
from typing import Any, Optional, Sequence

import numpy as np
import PIL.Image
import rasterio
import rasterio.errors
import rasterio.warp
import tqdm
import yaml

from data_prep import common
from stssl_jax import regions
from data_prep import writer
from stssl_jax.data import records

RGB_EXTS = ('.jpg', '.jpeg')
MS_EXTS = ('.tif', '.tiff')
DEFAULT_NUM_LABELS = (10, 20, 40, 80)
SOURCE = ('EuroSAT (Helber et al., IEEE JSTARS 2019), Sentinel-2 patches; MIT License; '
          'contains modified Copernicus Sentinel-2 data')


def split_pool_test(files: Sequence[Sequence[str]]) -> tuple[list[tuple[int, str]],
                                                             list[tuple[int, str]]]:
  """METHOD 3.1 split: per class, the first floor(0.8 n_c) names in string order -> pool.

  Args:
    files: [C][n_c] file names of each class (any order; sorted here as strings).

  Returns:
    (train, test): lists of (label, name), class by class, each class in string order.
  """
  train, test = [], []
  for label, names in enumerate(files):
    names = sorted(names)
    # n*4//5 is exactly floor(0.8 n); equals the original int((0.6 + 0.2) * n) for all n.
    k = len(names) * 4 // 5
    train += [(label, n) for n in names[:k]]
    test += [(label, n) for n in names[k:]]
  return train, test


def draw_labeled(labels: Sequence[int], num_labels: int, num_classes: int, seed: int = 0
                 ) -> list[int]:
  """Draws the class-balanced labeled subset exactly as the original code (METHOD 3.1).

  Equivalent to `np.random.seed(seed)` followed by the original's global-RNG calls: shuffle
  the list of pool positions; then for each class 0..C-1 take its positions in shuffled
  order, shuffle those again and keep the first num_labels / C.

  Args:
    labels: [N] class of each pool (train) record, in `train` order.
    num_labels: total labeled images; a multiple of num_classes.
    num_classes: C.
    seed: the legacy NumPy seed (the original used the run seed, 0).

  Returns:
    [num_labels] positions in `train`, in draw order (class 0 first).

  Raises:
    ValueError: when num_labels is not a multiple of C or a class is too small.
  """
  if num_labels <= 0 or num_labels % num_classes:
    raise ValueError(f'--num_labels {num_labels} must be a positive multiple of the '
                     f'{num_classes} classes (class-balanced subsets)')
  per_class = num_labels // num_classes
  labels = np.asarray(labels)
  # A local legacy RandomState yields the same stream as the seeded global one.
  rng = np.random.RandomState(seed)
  order = list(range(len(labels)))
  rng.shuffle(order)
  order = np.asarray(order, np.int64)
  shuffled = labels[order]
  drawn = []
  for c in range(num_classes):
    idx = np.where(shuffled == c)[0]
    if len(idx) < per_class:
      raise ValueError(f'--num_labels {num_labels}: class {c} has only {len(idx)} training '
                       f'images, fewer than {per_class}')
    rng.shuffle(idx)
    drawn += order[idx[:per_class]].tolist()
  return drawn


def _stem(name: str) -> str:
  """'AnnualCrop/AnnualCrop_1.jpg', 'AnnualCrop_1.jpg', 'AnnualCrop_1' -> 'AnnualCrop_1'."""
  base = name.strip().replace('\\', '/').rsplit('/', 1)[-1]
  suffix = pathlib.PurePath(base).suffix.lower()
  return base[:-len(suffix)] if suffix in RGB_EXTS + MS_EXTS + ('.png',) else base


def _check_latlon(path, key, lat, lon) -> tuple[float, float]:
  try:
    lat, lon = float(lat), float(lon)
  except (TypeError, ValueError):
    raise common.PrepError(f'{path}: entry {key!r}: lat/lon {lat!r}, {lon!r} are not numbers')
  if not (abs(lat) <= 90 and abs(lon) <= 180):
    raise common.PrepError(f'{path}: entry {key!r}: lat {lat}, lon {lon} are not WGS84 degrees')
  return lat, lon


def read_coords(path: str | pathlib.Path) -> dict[str, tuple[float, float]]:
  """Reads a coordinate table: file stem -> (lat, lon) in WGS84 degrees.

  Args:
    path: a CSV with columns `filename,lat,lon` (extra columns ignored; filename may be
      'Class/Class_1.jpg', 'Class_1.jpg' or the stem; `lng` accepted for `lon`), or the
      original authors' YAML mapping stem -> [lon, lat, ...] (NOTE: lon first).

  Returns:
    dict stem -> (lat, lon).

  Raises:
    PrepError: naming the file and the entry for missing columns, bad numbers, duplicates.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise common.PrepError(f'--coords {path}: no such file')
  coords: dict[str, tuple[float, float]] = {}

  def put(key, lat, lon):
    value = _check_latlon(path, key, lat, lon)
    stem = _stem(str(key))
    if coords.setdefault(stem, value) != value:
      raise common.PrepError(f'{path}: entry {key!r}: conflicting duplicate coordinates for {stem}')

  if path.suffix.lower() in ('.yaml', '.yml'):
    with open(path) as f:
      table = yaml.load(f, Loader=getattr(yaml, 'CSafeLoader', yaml.SafeLoader))
    if not isinstance(table, dict):
      raise common.PrepError(f'{path}: expected a mapping file stem -> [lon, lat, ...]')
    for key, value in table.items():
      if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise common.PrepError(f'{path}: entry {key!r}: expected [lon, lat, ...], got {value!r}')
      put(key, value[1], value[0])
    return coords
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    fields = reader.fieldnames or []
    lon_col = 'lon' if 'lon' in fields else 'lng'
    missing = [c for c in ('filename', 'lat', lon_col) if c not in fields]
    if missing:
      raise common.PrepError(f'{path}: missing column(s) {missing}; found {fields} '
                             '(need filename,lat,lon)')
    for row in reader:
      put(row['filename'], row['lat'], row[lon_col])
  return coords


def read_rgb(path: pathlib.Path) -> np.ndarray:
  """Decodes one JPEG; returns [H, W, 3] uint8. Raises on corrupt or non-RGB files."""
  with PIL.Image.open(path) as im:
    im.load()  # Forces a full decode so truncated files fail here.
    if im.mode != 'RGB':
      raise ValueError(f'mode {im.mode}, expected RGB')
    return np.asarray(im, np.uint8)


def read_ms(path: pathlib.Path) -> tuple[np.ndarray, float, float]:
  """Reads one GeoTIFF; returns ([H, W, bands] uint16, lat, lon of the exact patch centre).

  The centre (width/2, height/2 in pixel coordinates) goes through the geotransform, then
  is reprojected from the file's CRS (UTM for EuroSAT) to WGS84 (EPSG:4326).
  """
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', rasterio.errors.NotGeoreferencedWarning)
    with rasterio.open(path) as src:
      if src.crs is None or src.transform.is_identity:
        raise ValueError('no georeferencing (CRS and geotransform needed for lat/lon)')
      image = src.read()
      x, y = src.transform @ (src.width / 2, src.height / 2)
      lon, lat = rasterio.warp.transform(src.crs, 'EPSG:4326', [x], [y])
  if image.dtype != np.uint16:
    raise ValueError(f'dtype {image.dtype}, expected uint16')
  return np.ascontiguousarray(image.transpose(1, 2, 0)), float(lat[0]), float(lon[0])


def _scan(class_root, files, fmt, coords, bad):
  """Decodes every image once (validation); returns {name: (lat, lon)} and the image shape."""
  good, shape = {}, None
  flat = [n for names in files for n in names]
  for name in tqdm.tqdm(flat, desc='Decoding', unit='img'):
    path = class_root / name
    if fmt == 'rgb' and _stem(name) not in coords:
      bad.add(str(path), 'no coordinates in the coordinate table')
      continue
    try:
      if fmt == 'rgb':
        image, (lat, lon) = read_rgb(path), coords[_stem(name)]
      else:
        image, lat, lon = read_ms(path)
    except Exception as e:  # pylint: disable=broad-except
      bad.add(str(path), f'unreadable image ({type(e).__name__}: {e})')
      continue
    if shape is None:
      shape = image.shape
    if image.shape != shape:
      bad.add(str(path), f'image shape {image.shape} differs from {shape} of the first image')
      continue
    good[name] = (lat, lon)
  if shape is None:
    raise common.PrepError(f'{class_root}: no usable image')
  return good, shape


def prepare(images: str, out: str, coords: str | None = None, fmt: str = 'auto',
            name: str | None = None, num_labels: Sequence[int] = DEFAULT_NUM_LABELS,
            seed: int = 0, skip_bad: bool = False, overwrite: bool = False,
            holdout_box: Optional[str] = None,
            holdout_countries: Sequence[str] = ()) -> dict[str, Any]:
  """Converts raw EuroSAT into `<out>/<name>/<version>` (see the module docstring).

  Args:
    images: class-folder root (or an ancestor through single sub-folders).
    out: the data_dir to write into.
    coords: coordinate table (CSV or YAML), required for JPEGs, not used for GeoTIFFs.
    fmt: 'rgb', 'ms' or 'auto' (from the file suffixes).
    name: dataset name; default 'eurosat' (RGB) or 'eurosat_ms' (GeoTIFF).
    num_labels: total sizes of the labeled subsets to write.
    seed: legacy NumPy seed of the labeled draw.
    skip_bad: skip unreadable images / images without coordinates instead of failing.
    overwrite: rebuild an existing dataset.
    holdout_box: 'lat_min,lat_max,lon_min,lon_max' of a region to hold out.
    holdout_countries: ISO codes of countries to hold out (offline reverse geocoding).
      Held-out images are in no training/test split but in their own split `heldout`.

  Returns:
    dict with 'status' ('prepared' or 'already prepared'), 'path', 'splits', 'skipped'.
  """
  if fmt not in ('auto', 'rgb', 'ms'):
    raise common.PrepError(f"--format {fmt!r}: expected 'auto', 'rgb' or 'ms'")
  if fmt == 'auto':
    hits = [f for f, exts in (('rgb', RGB_EXTS), ('ms', MS_EXTS)) if _try_root(images, exts)]
    if not hits:  # Re-run the search to raise its descriptive error.
      common.find_class_root(images, RGB_EXTS + MS_EXTS)
    if len(hits) != 1:
      raise common.PrepError(f'--images {images}: cannot tell JPEG from GeoTIFF input '
                             f'(found {hits or "neither"}); pass --format rgb|ms')
    fmt = hits[0]
  exts = RGB_EXTS if fmt == 'rgb' else MS_EXTS
  class_root = common.find_class_root(images, exts)
  class_names, files = common.list_class_files(class_root, exts)
  name = name or ('eurosat' if fmt == 'rgb' else 'eurosat_ms')
  if fmt == 'rgb' and not coords:
    raise common.PrepError('--coords is required for JPEG input (EuroSAT RGB has no georeference)')
  if fmt == 'ms' and coords:
    raise common.PrepError('--coords is not used with GeoTIFF input (lat/lon come from the files)')
  num_labels = sorted(set(int(n) for n in num_labels))
  for n in num_labels:
    if n <= 0 or n % len(class_names):
      raise common.PrepError(f'--num_labels {n} must be a positive multiple of the '
                             f'{len(class_names)} classes')
  prep = {'format': fmt, 'seed': seed, 'num_labels': num_labels, 'skip_bad': skip_bad,
          'num_input_files': sum(map(len, files)), 'class_names': class_names,
          'split': 'per class: first floor(0.8 n_c) file names in string order -> train',
          'holdout_box': holdout_box or '', 'holdout_countries': sorted(holdout_countries)}
  box = regions.parse_box(holdout_box)
  done = common.already_prepared(out, name, prep, overwrite)
  if done is not None:
    return done

  table = read_coords(coords) if fmt == 'rgb' else {}
  bad = common.BadFiles(skip=skip_bad)
  good, shape = _scan(class_root, files, fmt, table, bad)
  held = set()
  if box is not None or holdout_countries:
    names = sorted(good)
    mask = regions.in_region([good[n][0] for n in names], [good[n][1] for n in names], box,
                             holdout_countries)
    held = {n for n, m in zip(names, mask) if m}
    if not held or len(held) == len(good):
      raise common.PrepError(f'hold-out region selects {len(held)} of {len(good)} images; '
                             'it must keep some and remove some')
  train, test = split_pool_test([[n for n in names if n in good and n not in held]
                                 for names in files])
  heldout = [(c, n) for c, names in enumerate(files) for n in sorted(names) if n in held]
  lb = {n: draw_labeled([lab for lab, _ in train], n, len(class_names), seed) for n in num_labels}

  def examples(rows, indices):
    for (label, fname), index in zip(rows, indices):
      path = class_root / fname
      if fmt == 'rgb':
        image, (lat, lon) = read_rgb(path), good[fname]
      else:
        image, lat, lon = read_ms(path)
      yield {'image': image, 'label': label, 'lat': lat, 'lon': lon, 'date': '',
             'filename': fname, 'index': index}

  splits = {'train': lambda: examples(train, range(len(train))),
            'test': lambda: examples(test, range(len(test)))}
  for n, idx in lb.items():
    splits[f'train_lb_{n}'] = lambda idx=idx: examples([train[i] for i in idx], idx)
  if heldout:
    splits['heldout'] = lambda: examples(heldout, range(len(heldout)))
  metadata = {
      'source': {'dataset': SOURCE, 'format': 'RGB JPEG' if fmt == 'rgb' else 'MS GeoTIFF',
                 'images': str(class_root), 'coords': str(coords) if coords else
                 'patch centre from each GeoTIFF geotransform, reprojected to EPSG:4326'},
      'dates': 'none: EuroSAT has no acquisition dates; date fields are empty strings',
      'prep': prep,
      'labeled_splits': {n: f'train_lb_{n}' for n in num_labels},
      'labeled_indices': lb,
      'skipped': bad.as_metadata(),
  }
  schema = records.Schema(tuple(class_names), tuple(shape), 'uint8' if fmt == 'rgb' else 'uint16')
  path = writer.write_dataset(out, name, splits, schema, metadata, overwrite=overwrite,
                               description=f'EuroSAT {fmt.upper()} in the stssl-jax record schema')
  return {'status': 'prepared', 'path': str(path), 'skipped': bad.items,
          'splits': {s: len(v) for s, v in (('train', train), ('test', test),
                                            ('heldout', heldout)) if v} |
                    {f'train_lb_{n}': n for n in num_labels}}


def _try_root(images, exts):
  try:
    return common.find_class_root(images, exts)
  except common.PrepError:
    return None


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  p = argparse.ArgumentParser(prog='python -m data_prep.eurosat', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--images', required=True,
                 help='folder with one sub-folder per class, or its parent (e.g. the one '
                 'holding 2750/)')
  p.add_argument('--coords', help="CSV filename,lat,lon or the authors' YAML stem -> "
                 '[lon, lat, x] (lon first); required for JPEGs, not used for GeoTIFFs')
  p.add_argument('--out', required=True, help='data_dir to write <name>/<version>/ into')
  p.add_argument('--format', default='auto', choices=('auto', 'rgb', 'ms'),
                 help='rgb = JPEG folders, ms = 13-band GeoTIFF folders (default: from suffixes)')
  p.add_argument('--name', help="dataset name (default 'eurosat', or 'eurosat_ms' for GeoTIFFs)")
  p.add_argument('--num_labels', default=','.join(map(str, DEFAULT_NUM_LABELS)),
                 help='comma-separated labeled-subset sizes (total images, class-balanced)')
  p.add_argument('--seed', type=int, default=0, help='legacy NumPy seed of the labeled draw')
  p.add_argument('--skip_bad', action='store_true',
                 help='skip unreadable images / images without coordinates and report them')
  p.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
  p.add_argument('--holdout_box', help='hold out lat_min,lat_max,lon_min,lon_max: removed '
                 'from train/test, written as split "heldout"')
  p.add_argument('--holdout_countries', default='',
                 help='hold out these ISO country codes (e.g. ES,PT; offline reverse geocoding)')
  args = p.parse_args(argv)
  try:
    num_labels = [int(n) for n in args.num_labels.split(',') if n.strip()]
  except ValueError:
    p.error(f'--num_labels {args.num_labels!r}: expected comma-separated integers')
  countries = [c for c in args.holdout_countries.split(',') if c.strip()]
  return common.run_and_report(
      lambda: prepare(args.images, args.out, args.coords, args.format, args.name, num_labels,
                      args.seed, args.skip_bad, args.overwrite, args.holdout_box, countries),
      args.skip_bad)


if __name__ == '__main__':
  sys.exit(main())
