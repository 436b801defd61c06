"""BigEarthNet split lists, exclusion lists, the metadata table and the labeled-subset draw.

Splits (METHOD 3.4): train/val/test patch lists minus every patch on the official lists of
seasonal snow and of cloud and cloud shadow. Accepted lists (`--lists DIR`), per split, the
first file found of:
  `bigearthnet-{split}.txt`               SeCo / Neumann et al. lists, one patch per line;
  `{split}.csv`, `{split}.txt` (+ `.bz2`)  plain lists: first comma-separated field of each
                                          line is a patch name ('#' lines and a header
                                          `patch`/`name`/`patch_name` are skipped);
  `{split}.pkl`, `{split}.pickle`, `{split}`  the original authors' pickled pandas tables
                                          (column `patch`); reading them needs pandas.
Default (no --lists): the official BigEarthNet v1 lists shipped in `data/bigearthnet_lists/`
(which already exclude the snow/cloud patches and the patches without a 19-class target).

Patches without a 19-class target (official list `patches_with_no_19_class_targets`, 57
patches whose labels are all among the 11 classes that the 19-class nomenclature drops):
removed from every split by default, as in the official lists; `keep_no19` keeps them with
an all-zero `label19`.

Labeled subsets: for fraction f of a train split of N patches, n_f = max(1, floor(f * N))
patches (exact decimal arithmetic; floor as sklearn's `train_size`), drawn uniformly without
replacement with `np.random.default_rng(seed).permutation(N)[:n_f]`. One permutation serves
all fractions, so the subsets are nested (0.005 ⊂ 0.01 ⊂ ...). The original draw is unknown
(METHOD 3.4); the authors' labeled tables `train{f}_lb_43[.pkl]` are used instead when they
are in the --lists folder.
"""

from __future__ import annotations

import bz2
import csv
import fractions
import hashlib
import io
import pathlib
from typing import Iterable, Mapping, Sequence

import numpy as np

from data_prep import common

SPLITS = ('train', 'val', 'test')
DEFAULT_LISTS = pathlib.Path(__file__).resolve().parent.parent / 'data' / 'bigearthnet_lists'
EXCLUSIONS = {'seasonal_snow': 'patches_with_seasonal_snow.csv.bz2',
              'cloud_and_shadow': 'patches_with_cloud_and_shadow.csv.bz2'}
NO19 = 'patches_with_no_19_class_targets.csv.bz2'
_HEADERS = {'patch', 'patch_name', 'name', 'patch_id', 'patches', 'filename'}
_PICKLE_EXTS = ('.pkl', '.pickle', '')


def _open_text(path: pathlib.Path):
  if path.suffix == '.bz2':
    return io.TextIOWrapper(bz2.open(path), encoding='utf-8')
  return open(path, encoding='utf-8')


def read_names(path: str | pathlib.Path) -> list[str]:
  """Reads a plain patch list (.txt/.csv, optionally .bz2); returns the names in file order.

  Raises:
    common.PrepError: naming the file when it is unreadable, empty or has duplicates.
  """
  path = pathlib.Path(path)
  names: list[str] = []
  try:
    with _open_text(path) as f:
      for row in csv.reader(line for line in f if not line.lstrip().startswith('#')):
        if not row or not row[0].strip():
          continue
        # Lists sometimes hold folder paths: keep the last component.
        name = row[0].strip().rstrip('/').replace('\\', '/').rsplit('/', 1)[-1]
        if not names and name.lower() in _HEADERS:
          continue
        names.append(name)
  except (OSError, UnicodeDecodeError, EOFError, csv.Error) as e:
    raise common.PrepError(f'{path}: unreadable patch list ({type(e).__name__}: {e})')
  _check_unique(path, names)
  return names


def read_pickled_names(path: str | pathlib.Path) -> list[str]:
  """Reads the `patch` column of one of the original authors' pickled pandas tables."""
  path = pathlib.Path(path)
  try:
    import pandas  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise common.PrepError(f'{path}: reading the pickled split tables needs pandas, which is '
                           'not installed (pip install pandas), or pass plain .txt/.csv lists')
  try:
    table = pandas.read_pickle(path)
  except Exception as e:  # pylint: disable=broad-except
    raise common.PrepError(f'{path}: unreadable pickled table ({type(e).__name__}: {e})')
  if 'patch' not in getattr(table, 'columns', ()):
    raise common.PrepError(f'{path}: the table has no column `patch` '
                           f'(columns: {list(getattr(table, "columns", []))})')
  names = [str(n) for n in table['patch']]
  _check_unique(path, names)
  return names


def _check_unique(path, names):
  if not names:
    raise common.PrepError(f'{path}: the patch list is empty')
  seen = set()
  for n in names:
    if n in seen:
      raise common.PrepError(f'{path}: patch {n} is listed more than once')
    seen.add(n)


def _candidates(split: str) -> list[str]:
  return ([f'bigearthnet-{split}.txt', f'{split}.csv', f'{split}.csv.bz2', f'{split}.txt',
           f'{split}.txt.bz2'] + [f'{split}{ext}' for ext in _PICKLE_EXTS])


def read_list(path: pathlib.Path) -> list[str]:
  """A split list of any accepted kind (module docstring), by file name."""
  if path.suffix in ('.pkl', '.pickle') or not path.suffix:
    return read_pickled_names(path)
  return read_names(path)


def find_lists(lists_dir: str | pathlib.Path) -> dict[str, pathlib.Path]:
  """Locates the train/val/test list files in `lists_dir` (module docstring).

  Raises:
    common.PrepError: naming the folder and the expected names when a split has no list.
  """
  d = pathlib.Path(lists_dir)
  if not d.is_dir():
    raise common.PrepError(f'--lists {d}: not a directory')
  found = {}
  for split in SPLITS:
    hits = [d / c for c in _candidates(split) if (d / c).is_file()]
    if not hits:
      raise common.PrepError(f'--lists {d}: no {split} list (looked for '
                             f'{", ".join(_candidates(split))})')
    found[split] = hits[0]
  return found


def load_splits(lists_dir: str | pathlib.Path | None = None, keep_no19: bool = False,
                exclusions_dir: str | pathlib.Path = DEFAULT_LISTS
                ) -> tuple[dict[str, list[str]], dict]:
  """Reads the split lists and removes the excluded patches.

  Args:
    lists_dir: folder with the lists; None = the official v1 lists in DEFAULT_LISTS.
    keep_no19: keep patches without a 19-class target.
    exclusions_dir: folder with the official exclusion lists (EXCLUSIONS, NO19).

  Returns:
    ({split: [patch names]} in list order, report dict: list files, counts before/after,
    patches removed per exclusion list and split).

  Raises:
    common.PrepError: naming the file for unreadable lists, or the two splits sharing a patch.
  """
  files = find_lists(lists_dir if lists_dir is not None else DEFAULT_LISTS)
  raw = {split: read_list(path) for split, path in files.items()}
  seen: dict[str, str] = {}
  for split, names in raw.items():
    for n in names:
      if seen.setdefault(n, split) != split:
        raise common.PrepError(f'patch {n} is in both the {seen[n]} list ({files[seen[n]]}) '
                               f'and the {split} list ({files[split]})')
  excluded = dict(EXCLUSIONS) if keep_no19 else dict(EXCLUSIONS, no_19_class_targets=NO19)
  drop = {key: set(read_names(pathlib.Path(exclusions_dir) / f)) for key, f in excluded.items()}
  every = set().union(*drop.values())
  splits = {split: [n for n in names if n not in every] for split, names in raw.items()}
  removed = {key: {split: sum(n in bad for n in names) for split, names in raw.items()}
             for key, bad in drop.items()}
  report = {
      'lists': {s: str(p) for s, p in files.items()},
      'lists_sha256': {s: hashlib.sha256(p.read_bytes()).hexdigest() for s, p in files.items()},
      'lists_kind': 'official BigEarthNet v1 lists (shipped)' if lists_dir is None else
                    'user-supplied (--lists)',
      'exclusion_lists': {k: str(pathlib.Path(exclusions_dir) / f) for k, f in excluded.items()},
      'listed': {s: len(v) for s, v in raw.items()},
      'removed': removed,
      'kept': {s: len(v) for s, v in splits.items()},
      'no_19_class_targets': 'kept (label19 all zero)' if keep_no19 else 'removed',
  }
  return splits, report


def fraction_key(frac: str | float) -> float:
  """The fraction as a float in (0, 1] (the key of labeled_splits in load_info)."""
  value = float(frac)
  if not 0 < value <= 1:
    raise common.PrepError(f'--fractions: {frac!r} is not in (0, 1]')
  return value


def labeled_split_name(frac: float) -> str:
  """0.005 -> 'train_lb_0p005' (TFDS split names cannot hold a dot)."""
  return 'train_lb_' + repr(float(frac)).replace('.', 'p')


def num_labeled(frac: float, n: int) -> int:
  """max(1, floor(frac * n)), exact for the decimal written (0.29 * 100 = 29, not 28)."""
  return max(1, int(fractions.Fraction(repr(float(frac))) * n))


def draw_labeled(n: int, fracs: Iterable[float], seed: int) -> dict[float, list[int]]:
  """Nested uniform draws of train positions (module docstring).

  Args:
    n: train split size N.
    fracs: label fractions.
    seed: seed of np.random.default_rng.

  Returns:
    {fraction: sorted [n_f] positions in train}.
  """
  perm = np.random.default_rng(seed).permutation(n)
  return {f: sorted(int(i) for i in perm[:num_labeled(f, n)]) for f in fracs}


def find_labeled_tables(lists_dir: str | pathlib.Path | None, fracs: Mapping[float, str]
                        ) -> dict[float, pathlib.Path]:
  """The authors' labeled tables `train{f}_lb_43[.pkl|.pickle]` present in lists_dir.

  Args:
    lists_dir: the --lists folder (None: nothing found).
    fracs: {fraction: the fraction as written on the command line}.
  """
  if lists_dir is None:
    return {}
  d, found = pathlib.Path(lists_dir), {}
  for frac, text in fracs.items():
    for written in dict.fromkeys((text, repr(frac))):
      for ext in _PICKLE_EXTS:
        if (d / f'train{written}_lb_43{ext}').is_file() and frac not in found:
          found[frac] = d / f'train{written}_lb_43{ext}'
  return found


def read_metadata_table(path: str | pathlib.Path
                        ) -> dict[str, tuple[float | None, float | None, str, str]]:
  """Reads per-patch metadata: patch -> (lat, lon, country, season).

  Args:
    path: the shared `bigearthnet_v1_s2_patch_metadata.npz` (keys patch_name, lat, lon,
      country + country_names, season + season_names), or a CSV with columns
      `patch` (or `patch_name`), `country`, `season` and optionally `lat`, `lon`
      ('#' lines skipped).

  Returns:
    dict patch name -> (lat or None, lon or None, country, season).

  Raises:
    common.PrepError: naming the file and the missing key/column.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise common.PrepError(f'--metadata {path}: no such file')
  if path.suffix == '.npz':
    try:
      z = np.load(path)
      cols = {k: z[k] for k in ('patch_name', 'lat', 'lon', 'country', 'country_names',
                                'season', 'season_names')}
    except KeyError as e:
      raise common.PrepError(f'{path}: missing key {e}')
    except (OSError, ValueError) as e:
      raise common.PrepError(f'{path}: unreadable npz ({type(e).__name__}: {e})')
    country = np.asarray(cols['country_names']).astype(str)[cols['country']]
    season = np.asarray(cols['season_names']).astype(str)[cols['season']]
    return dict(zip(cols['patch_name'].astype(str).tolist(),
                    zip(cols['lat'].tolist(), cols['lon'].tolist(), country.tolist(),
                        season.tolist())))
  with open(path, newline='', encoding='utf-8') as f:
    reader = csv.DictReader(line for line in f if not line.startswith('#'))
    fields = reader.fieldnames or []
    key = 'patch' if 'patch' in fields else 'patch_name'
    missing = [c for c in (key, 'country', 'season') if c not in fields]
    if missing:
      raise common.PrepError(f'{path}: missing column(s) {missing}; found {fields}')
    table = {}
    for row in reader:
      lat, lon = row.get('lat'), row.get('lon', row.get('lng'))
      try:
        coords = (float(lat), float(lon)) if lat and lon else (None, None)
      except ValueError:
        raise common.PrepError(f'{path}: patch {row[key]}: lat/lon {lat!r}, {lon!r} are not '
                               'numbers')
      table[row[key]] = coords + (row['country'], row['season'])
  return table


def missing_patches(root: pathlib.Path, names: Sequence[str]) -> list[str]:
  """Listed patches without a folder `root/<patch>/`."""
  return [n for n in names if not (root / n).is_dir()]
