r"""BigEarthNet-S2 v1.0 patch folders (rasterio + JSON) + split lists -> TFDS ArrayRecord dataset.

Prepare the bundled 14 real patches (13 kept: one is on the seasonal-snow list):

  python -m data_prep.bigearthnet --images data/bigearthnet_sample/BigEarthNet-v1.0 \
      --lists data/bigearthnet_sample/splits --metadata data/bigearthnet_sample/metadata.csv \
      --out prepared/bigearthnet_sample

Full archive (BigEarthNet-S2-v1.0.tar.gz extracted; official v1 lists by default):

  python -m data_prep.bigearthnet --images /data/BigEarthNet-v1.0 --out prepared \
      --metadata bigearthnet_v1_s2_patch_metadata.npz --workers 32

Records (stssl_jax/data/records.py), one per patch `<images>/<patch>/`:
  image     uint16 [120, 120, C], bands of --bands (rgb: B04, B03, B02 = R, G, B; all: the 12
            bands in BigEarthNet order). 20 m and 60 m bands are upsampled to 120x120 with
            GDAL's bilinear resampling (a rasterio read with out_shape; pixel-centre aligned,
            edges clamped), the usual choice for BigEarthNet; the paper uses RGB only, so
            no resampling happens in the released setting.
  label     multi-hot uint8 [43] (METHOD 3.4 order); `label19` multi-hot uint8 [19].
  lat, lon  centre of the JSON's UTM corners ((ulx + lrx) / 2, (uly + lry) / 2),
            reprojected from the JSON `projection` to EPSG:4326 with rasterio.warp.
  date      the JSON `acquisition_date` (`YYYY-MM-DD HH:MM:SS`).
  filename  the patch name; index as in records.py.
  country, season  from the --metadata table (BigEarthNet's own lookup); '' without it.
With --metadata, lat/lon are also compared with the table's centre; deviations over 1 m are
reported (metadata `latlon_check`), not fatal.

Splits: `train`, `val`, `test` (data_prep/bigearthnet_lists.py: lists, exclusions, the
patches without a 19-class target) and `train_lb_<f>` (e.g. `train_lb_0p01`) for each label
fraction f: a seeded draw from train, in train order, whose records are byte copies of the
train records (index = train position). The unlabeled set is all of `train`. With
--holdout_countries / --holdout_seasons (and --metadata), the matching patches leave every
split for the split `heldout` before the labeled draw (the metadata-shift evaluation).

Work is parallel (--workers processes), shown with a progress bar, and resumable: shards of
--shard_size patches are written under `<out>/.<name>.work-<settings digest>/` with a
done-marker each, so a killed run restarts where it stopped; the finished shards become the
dataset's files (hard links) and the dataset is renamed into place only when complete. A
work folder left by an interrupted run with other settings is not reused and can be deleted.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import sys
import time
from typing import Any, Sequence

import numpy as np
import rasterio
import rasterio.crs
import rasterio.errors
import rasterio.warp
from rasterio.enums import Resampling

from data_prep import bigearthnet_labels as labels_lib
from data_prep import bigearthnet_lists as lists_lib
from data_prep import common
from stssl_jax import regions
from data_prep import shards
from stssl_jax.data import records

DEFAULT_FRACTIONS = ('0.005', '0.01', '0.02', '0.04', '0.08')
SOURCE = ('BigEarthNet-S2 v1.0 (Sumbul et al., IGARSS 2019; BigEarthNet-MM, IEEE GRSM 2021); '
          'CDLA-Permissive-1.0; contains modified Copernicus Sentinel data 2017-2018')
RESAMPLING = ('20 m and 60 m bands upsampled to 120x120 with GDAL bilinear resampling '
              '(rasterio read with out_shape); 10 m bands unchanged')
_DATE_RE = re.compile(r'^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$')
_EARTH_RADIUS_M = 6371008.8
# Halve the GeoTIFF open time: no directory listing for sidecar files, and the band files'
# CRS built from their GeoKeys without EPSG database look-ups (it is not used: lat/lon
# come from the JSON).
_GDAL_OPTIONS = {'GDAL_DISABLE_READDIR_ON_OPEN': 'EMPTY_DIR', 'GTIFF_SRS_SOURCE': 'GEOKEYS'}


@functools.lru_cache(maxsize=64)
def _crs(wkt: str) -> rasterio.crs.CRS:
  return rasterio.crs.CRS.from_wkt(wkt)


def patch_centre(coords: dict, projection: str) -> tuple[float, float]:
  """(lat, lon) in WGS84 degrees of the centre of a patch's UTM corners."""
  x = (coords['ulx'] + coords['lrx']) / 2
  y = (coords['uly'] + coords['lry']) / 2
  lon, lat = rasterio.warp.transform(_crs(projection), 'EPSG:4326', [x], [y])
  return float(lat[0]), float(lon[0])


def distance_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
  """Great-circle distance in metres (haversine, mean Earth radius)."""
  p1, p2 = math.radians(lat1), math.radians(lat2)
  a = (math.sin((p2 - p1) / 2) ** 2 +
       math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
  return 2 * _EARTH_RADIUS_M * math.asin(math.sqrt(a))


def read_json(path: pathlib.Path) -> dict:
  """Reads and validates a `<patch>_labels_metadata.json`; raises shards.BadItem naming it."""
  if not path.is_file():
    raise shards.BadItem(path, 'missing labels/metadata JSON')
  try:
    with open(path, encoding='utf-8') as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise shards.BadItem(path, f'malformed JSON ({type(e).__name__}: {e})')
  if not isinstance(meta, dict):
    raise shards.BadItem(path, 'malformed JSON (not an object)')
  missing = [k for k in ('labels', 'coordinates', 'projection', 'acquisition_date')
             if k not in meta]
  if missing:
    raise shards.BadItem(path, f'missing key(s) {missing}')
  if not isinstance(meta['labels'], list) or not all(isinstance(x, str) for x in meta['labels']):
    raise shards.BadItem(path, f'`labels` must be a list of class names, got {meta["labels"]!r}')
  c = meta['coordinates']
  if (not isinstance(c, dict) or
      not all(isinstance(c.get(k), (int, float)) for k in ('ulx', 'uly', 'lrx', 'lry')) or
      not (c['ulx'] < c['lrx'] and c['lry'] < c['uly'])):
    raise shards.BadItem(path, f'`coordinates` must hold ulx < lrx, lry < uly, got {c!r}')
  try:
    _crs(meta['projection'])
  except (rasterio.errors.CRSError, TypeError) as e:
    raise shards.BadItem(path, f'`projection` is not a valid WKT CRS ({e})')
  date = meta['acquisition_date']
  if not isinstance(date, str) or not _DATE_RE.match(date):
    raise shards.BadItem(path, f'`acquisition_date` {date!r} is not YYYY-MM-DD HH:MM:SS')
  return meta


def read_band(path: pathlib.Path, band: str) -> np.ndarray:
  """Reads one band GeoTIFF at 120x120 (resampled when coarser); returns uint16 [120, 120]."""
  if not path.is_file():
    raise shards.BadItem(path, 'missing band file')
  size = labels_lib.BAND_SIZE[band]
  try:
    with rasterio.open(path) as src:
      got = (src.count, src.dtypes[0], src.height, src.width)
      if got != (1, 'uint16', size, size):
        raise shards.BadItem(path, f'expected 1 uint16 band of {size}x{size} px, got '
                             f'{got[0]} {got[1]} band(s) of {got[2]}x{got[3]} px')
      if size == labels_lib.PATCH_SIZE:
        return src.read(1)
      side = labels_lib.PATCH_SIZE
      return src.read(1, out_shape=(side, side), resampling=Resampling.bilinear)
  except (rasterio.errors.RasterioError, OSError, ValueError) as e:
    raise shards.BadItem(path, f'corrupt or unreadable GeoTIFF ({type(e).__name__}: {e})')


def read_patch(item: tuple, images: str, bands: Sequence[str]) -> dict[str, Any]:
  """Reads one patch folder into an example for records.encode.

  Args:
    item: (patch name, country, season, table lat or None, table lon or None).
    images: folder holding the patch folders.
    bands: band names, in channel order.

  Returns:
    dict: image uint16 [120, 120, C], label uint8 [43], label19 uint8 [19], lat, lon, date,
    filename, country, season, and side information `_latlon_dev_m` (distance to the table
    centre in metres, None without one).

  Raises:
    shards.BadItem: naming the missing/corrupt band file or the malformed JSON.
  """
  name, country, season, table_lat, table_lon = item
  folder = pathlib.Path(images) / name
  json_path = folder / f'{name}_labels_metadata.json'
  meta = read_json(json_path)
  try:
    label43, label19 = labels_lib.multi_hot(meta['labels'], str(json_path))
  except ValueError as e:
    raise shards.BadItem(json_path, str(e).split(': ', 1)[1])
  lat, lon = patch_centre(meta['coordinates'], meta['projection'])
  with rasterio.Env(**_GDAL_OPTIONS):
    image = np.stack([read_band(folder / f'{name}_{b}.tif', b) for b in bands], axis=-1)
  dev = None if table_lat is None else distance_m(lat, lon, table_lat, table_lon)
  return {'image': image, 'label': label43, 'label19': label19, 'lat': lat, 'lon': lon,
          'date': meta['acquisition_date'], 'filename': name, 'country': country,
          'season': season, '_latlon_dev_m': dev}


def schema_for(bands: Sequence[str]) -> records.Schema:
  """The record schema of a BigEarthNet dataset with these bands."""
  side = labels_lib.PATCH_SIZE
  return records.Schema(labels_lib.LABELS43, (side, side, len(bands)), 'uint16',
                        multilabel=True, image_encoding='bytes',
                        extra_text=('country', 'season'),
                        extra_multihot=(('label19', labels_lib.LABELS19),))


def _hold_out(splits: dict[str, list[str]], table: dict, countries: Sequence[str],
              seasons: Sequence[str], match: str) -> dict[str, Any]:
  """Moves the held-out patches of every split into `splits['heldout']` (in place).

  Returns:
    {} without a hold-out, else {'settings': ..., 'removed': {split: count}}.
  Raises:
    common.PrepError: no metadata table, unknown values, or a selection that empties a split
      or holds out nothing.
  """
  if not countries and not seasons:
    return {}
  if not table:
    raise common.PrepError('--holdout_countries / --holdout_seasons need --metadata (the '
                           'per-patch country and season table)')
  names = [n for s in splits.values() for n in s]
  rows = [table.get(n, (None, None, '', '')) for n in names]
  try:
    held = regions.select_by_attributes(names, [r[2] for r in rows], [r[3] for r in rows],
                                        countries, seasons, match)
  except ValueError as e:
    raise common.PrepError(str(e))
  removed = {}
  for split in list(splits):
    kept = [n for n in splits[split] if n not in held]
    removed[split] = len(splits[split]) - len(kept)
    if not kept:
      raise common.PrepError(f'the hold-out selection removes all {removed[split]} patches of '
                             f'the {split} split')
    splits[split] = kept
  if not held:
    raise common.PrepError('the hold-out selection matches no listed patch')
  splits['heldout'] = sorted(held)
  settings = {'countries': sorted(countries), 'seasons': sorted(seasons), 'match': match}
  return {'settings': settings, 'removed': removed}


def _counts(active: Sequence[Sequence[int]], num: int) -> list[int]:
  counts = np.zeros(num, np.int64)
  for idx in active:
    counts[list(idx)] += 1
  return counts.tolist()


def _latlon_check(summaries) -> dict[str, Any]:
  devs = [(n, d) for s in summaries.values()
          for n, d in zip(s.names, s.side.get('latlon_dev_m', [])) if d is not None]
  over = [n for n, d in devs if d > 1.0]
  return {'checked': len(devs), 'max_m': max((d for _, d in devs), default=None),
          'num_over_1m': len(over), 'over_1m': over[:100]}


def _labeled_subsets(train_names: Sequence[str], lists: str | None, fracs: dict[float, str],
                     seed: int) -> tuple[dict[float, list[int]], dict[float, str]]:
  """Labeled train positions per fraction (seeded draw, or the authors' tables when given).

  Returns:
    ({fraction: sorted train positions}, {fraction: how they were chosen}).
  """
  n = len(train_names)
  labeled = lists_lib.draw_labeled(n, fracs, seed)
  draw = {f: f'np.random.default_rng({seed}).permutation(N)[:max(1, floor(f * N))], '
             f'N = {n}, sorted' for f in fracs}
  position = {name: i for i, name in enumerate(train_names)}
  for f, path in lists_lib.find_labeled_tables(lists, fracs).items():
    chosen = lists_lib.read_pickled_names(path)
    outside = [name for name in chosen if name not in position]
    if outside:
      raise common.PrepError(f'{path}: {len(outside)} labeled patches are not in the train '
                             f'split, e.g. {outside[0]}')
    labeled[f], draw[f] = sorted(position[name] for name in chosen), f"authors' table {path}"
  return labeled, draw


def _class_stats(summaries, labeled: dict[float, list[int]]):
  """Per-split class counts (43 and 19 classes) and the labeled subsets' prevalences.

  Returns:
    (counts43 {split: [43]}, counts19 {split: [19]}, prevalence43 {fraction: [43]},
    prevalence19 {fraction: [19]}); the counts include the labeled splits.
  """
  train = summaries['train']
  counts43 = {s: _counts(v.labels, 43) for s, v in summaries.items()}
  counts19 = {s: _counts(v.extras['label19'], 19) for s, v in summaries.items()}
  prevalence43, prevalence19 = {}, {}
  for f, idx in labeled.items():
    split = lists_lib.labeled_split_name(f)
    counts43[split] = _counts([train.labels[i] for i in idx], 43)
    counts19[split] = _counts([train.extras['label19'][i] for i in idx], 19)
    prevalence43[f] = [c / len(idx) for c in counts43[split]]
    prevalence19[f] = [c / len(idx) for c in counts19[split]]
  return counts43, counts19, prevalence43, prevalence19


def prepare(images: str, out: str, lists: str | None = None, metadata: str | None = None,
            bands: str = 'rgb', fractions: Sequence[str] = DEFAULT_FRACTIONS, seed: int = 0,
            name: str | None = None, workers: int = 1, shard_size: int = 2000,
            skip_bad: bool = False, keep_no19: bool = False, overwrite: bool = False,
            holdout_countries: Sequence[str] = (), holdout_seasons: Sequence[str] = (),
            holdout_match: str = 'any') -> dict[str, Any]:
  """Converts BigEarthNet-S2 v1.0 into `<out>/<name>/<version>` (module docstring).

  Args:
    images: folder holding one folder per patch (e.g. `BigEarthNet-v1.0/`).
    out: data_dir to write into.
    lists: folder with split lists (bigearthnet_lists); None = official v1 lists.
    metadata: per-patch table (npz or CSV) giving country, season and a lat/lon check.
    bands: 'rgb', 'all' or comma-separated band names.
    fractions: label fractions of train, as written (e.g. '0.01').
    seed: seed of the labeled draw.
    name: dataset name; default 'bigearthnet' (rgb) or 'bigearthnet_ms'.
    workers: worker processes.
    shard_size: patches per shard (unit of parallel work and of resumption).
    skip_bad: skip bad or absent patches and report them instead of failing.
    keep_no19: keep patches without a 19-class target (label19 all zero).
    overwrite: rebuild an existing dataset.
    holdout_countries: countries (names or ISO codes) moved from every split into the split
      `heldout` (needs `metadata`; stssl_jax/regions.py).
    holdout_seasons: seasons (Winter, Spring, Summer, Fall) held out likewise.
    holdout_match: 'any' (either list) or 'all' (both) when both lists are given.

  Returns:
    dict with 'status', 'path', 'splits' {split: count}, 'skipped' [(file, reason)].
  """
  try:
    band_names = labels_lib.parse_bands(bands)
  except ValueError as e:
    raise common.PrepError(str(e))
  name = name or ('bigearthnet' if band_names == labels_lib.RGB_BANDS else 'bigearthnet_ms')
  root = pathlib.Path(images)
  if not root.is_dir():
    raise common.PrepError(f'--images {root}: not a directory')
  fracs = {lists_lib.fraction_key(f): f for f in fractions}
  splits, split_report = lists_lib.load_splits(lists, keep_no19)
  table = lists_lib.read_metadata_table(metadata) if metadata else {}
  bad = common.BadFiles(skip=skip_bad)
  for split, names in splits.items():
    absent = set(lists_lib.missing_patches(root, names))
    for n in sorted(absent):
      bad.add(str(root / n), f'listed in the {split} list but absent from disk')
    splits[split] = [n for n in names if n not in absent]
  holdout = _hold_out(splits, table, holdout_countries, holdout_seasons, holdout_match)
  prep = {'images': str(root.resolve()), 'lists': split_report['lists'], 'bands': band_names,
          'fractions': sorted(fracs), 'seed': seed, 'keep_no19': keep_no19,
          'skip_bad': skip_bad, 'metadata': str(metadata) if metadata else None,
          'num_listed': split_report['listed'],
          **({'holdout': holdout['settings']} if holdout else {})}
  done = common.already_prepared(out, name, prep, overwrite)
  if done is not None:
    return done

  def item(n):
    lat, lon, country, season = table.get(n, (None, None, '', ''))
    return (n, country, season, lat, lon)

  items = {s: [item(n) for n in names] for s, names in splits.items()}
  digest = hashlib.sha1(json.dumps([prep, shard_size, splits], sort_keys=True).encode())
  work = pathlib.Path(out) / f'.{name}.work-{digest.hexdigest()[:12]}'
  schema = schema_for(band_names)
  tasks = shards.make_tasks(items, shard_size)
  reader = functools.partial(read_patch, images=str(root), bands=band_names)
  start = time.perf_counter()
  built = shards.run_tasks(tasks, reader, schema, work, workers, skip_bad)
  convert_s = time.perf_counter() - start
  summaries = shards.load_summaries(tasks, work)
  skipped = bad.items + [b for s in summaries.values() for b in s.bad]
  if 'train' not in summaries or not summaries['train'].names:
    raise common.PrepError('the train split has no usable patch')

  labeled, draw = _labeled_subsets(summaries['train'].names, lists, fracs, seed)
  lb_names = {lists_lib.labeled_split_name(f): idx for f, idx in labeled.items()}
  counts43, counts19, prevalence43, prevalence19 = _class_stats(summaries, labeled)
  check = _latlon_check(summaries)
  if check['num_over_1m']:
    print(f'warning: {check["num_over_1m"]} patch centres differ from the --metadata table by '
          f'more than 1 m (max {check["max_m"]:.1f} m), e.g. {check["over_1m"][:3]}',
          file=sys.stderr)
  mean0, std0 = labels_lib.original_stats(band_names)
  info = {
      'source': {'dataset': SOURCE, 'images': str(root), **split_report},
      'prep': prep,
      'class_counts': counts43,
      'class_names19': list(labels_lib.LABELS19),
      'class_counts19': counts19,
      'label19': 'standard BigEarthNet 43 -> 19 mapping (data_prep/bigearthnet_labels.py)',
      'band_names': list(band_names),
      'band_mean_original': mean0,
      'band_std_original': std0,
      'band_stats_original_source': 'TU Berlin bigearthnet-models-tf BigEarthNet.py (METHOD '
                                    '3.4 gives the RGB ones); raw DN, whole archive',
      'resampling': RESAMPLING,
      'latlon': 'centre of the JSON UTM corners, reprojected to EPSG:4326 (rasterio.warp)',
      'latlon_check': check,
      'dates': 'acquisition_date of each patch JSON',
      'country_season': f'from --metadata {metadata}' if metadata else
                        'empty strings (no --metadata table given)',
      'metadata_missing': sum(n not in table for s in splits.values() for n in s)
                          if metadata else None,
      'holdout': holdout or None,
      'labeled_splits': {f: lists_lib.labeled_split_name(f) for f in labeled},
      'labeled_indices': labeled,
      'labeled_draw': draw,
      'lb_prevalence': prevalence43,
      'lb_prevalence19': prevalence19,
      'skipped': [{'file': f, 'reason': r} for f, r in skipped],
  }
  path = shards.assemble(out, name, schema, summaries, lb_names, info, shard_size,
                         description=f'BigEarthNet-S2 v1.0 ({",".join(band_names)}) in the '
                                     'stssl-jax record schema')
  shutil.rmtree(work, ignore_errors=True)
  timings = {'convert_s': convert_s, 'assemble_s': time.perf_counter() - start - convert_s,
             'shards_built': built, 'shards': len(tasks)}
  return {'status': 'prepared', 'path': str(path), 'skipped': skipped, 'timings': timings,
          'splits': {s: len(v.names) for s, v in summaries.items()} |
                    {s: len(v) for s, v in lb_names.items()}}


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the exit status."""
  p = argparse.ArgumentParser(prog='python -m data_prep.bigearthnet', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--images', required=True,
                 help='folder holding one folder per patch (BigEarthNet-v1.0/)')
  p.add_argument('--out', required=True, help='data_dir to write <name>/<version>/ into')
  p.add_argument('--lists', help='folder with train/val/test lists: SeCo bigearthnet-{split}'
                 '.txt, plain {split}.csv/.txt[.bz2], or the authors\' pickled tables (needs '
                 'pandas); default: the official v1 lists in data/bigearthnet_lists')
  p.add_argument('--metadata', help='per-patch table (the shared npz, or CSV patch,lat,lon,'
                 'country,season) for country/season and a lat/lon check; default: none '
                 '(country/season empty)')
  p.add_argument('--bands', default='rgb',
                 help="'rgb' (B04,B03,B02, the paper), 'all' (12 bands) or a comma list")
  p.add_argument('--fractions', default=','.join(DEFAULT_FRACTIONS),
                 help='comma-separated label fractions of train (default: %(default)s)')
  p.add_argument('--seed', type=int, default=0, help='seed of the labeled draw (default 0)')
  p.add_argument('--name', help="dataset name (default 'bigearthnet', or 'bigearthnet_ms' "
                 'for other bands)')
  p.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                 help='worker processes (default: all cores)')
  p.add_argument('--shard_size', type=int, default=2000,
                 help='patches per shard, the unit of parallel work and of resumption '
                 '(default: %(default)s)')
  p.add_argument('--skip_bad', action='store_true',
                 help='skip corrupt/missing files and absent patches, and report them')
  p.add_argument('--keep_no19', action='store_true',
                 help='keep the patches without a 19-class target (default: removed, as in '
                 'the official lists)')
  p.add_argument('--overwrite', action='store_true', help='rebuild an existing dataset')
  p.add_argument('--holdout_countries', default='',
                 help='hold out these countries (names or ISO codes, e.g. PT,FI): removed from '
                 'every split and written as split "heldout"; needs --metadata')
  p.add_argument('--holdout_seasons', default='',
                 help='hold out these seasons (Winter,Spring,Summer,Fall) likewise')
  p.add_argument('--holdout_match', default='any', choices=('any', 'all'),
                 help='with both lists: hold out patches matching either (any) or both (all, '
                 'e.g. Finland in winter); default: %(default)s')
  args = p.parse_args(argv)
  fractions = [f.strip() for f in args.fractions.split(',') if f.strip()]
  split_list = lambda text: [v.strip() for v in text.split(',') if v.strip()]
  return common.run_and_report(
      lambda: prepare(args.images, args.out, args.lists, args.metadata, args.bands, fractions,
                      args.seed, args.name, args.workers, args.shard_size, args.skip_bad,
                      args.keep_no19, args.overwrite, split_list(args.holdout_countries),
                      split_list(args.holdout_seasons), args.holdout_match), args.skip_bad)


if __name__ == '__main__':
  sys.exit(main())
