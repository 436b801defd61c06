"""What a run report shows, computed from a workdir: metrics series, pooled pseudo-label
quality, per-class and per-group (country, season) metrics, package versions, region names.

No HTML here: `report.py` lays these out. Also used by `compare.py` (across runs).
"""

import glob
import importlib.metadata
import json
import math
import os
import platform
import re
from typing import Any, Optional

import numpy as np

from stssl_jax import metrics_multilabel as metrics_ml


# Distributions whose versions identify the software stack of a run.
PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'grain', 'tensorflow-datasets',
            'numpy', 'clu', 'ml-collections', 'matplotlib')
SEASONS = ('spring', 'summer', 'autumn', 'fall', 'winter')


def package_versions() -> dict[str, str]:
  """Versions of python and `PACKAGES` in this environment ('not installed' if absent)."""
  out = {'python': platform.python_version()}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = 'not installed'
  return out


def read_json(path: str) -> Optional[Any]:
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_metrics(path: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metrics.jsonl -> {key: (steps [T], values [T])}, sorted by step.

  A resumed run logs again the steps after its last checkpoint; the last record of a step wins.
  """
  by_key: dict[str, dict[int, float]] = {}
  if os.path.isfile(path):
    with open(path) as f:
      for line in f:
        if not line.strip():
          continue
        record = json.loads(line)
        step = int(record.pop('step'))
        for k, v in record.items():
          if isinstance(v, (int, float)):
            by_key.setdefault(k, {})[step] = float(v)
  return {k: (np.array(sorted(d)), np.array([d[s] for s in sorted(d)])) for k, d in by_key.items()}


PL_METRICS = ('recall', 'accuracy', 'accuracy_all', 'precision')


def pooled_pl(series: dict, source: str, since: int = 0) -> dict:
  """Pseudo-label quality of `source` pooled over the logging intervals at step >= since.

  Args:
    series: `report.read_metrics` output, {key: (steps [T], values [T])}.
    source: 'teacher' or 'image_only'.
    since: first step to include.
  Returns:
    {metric: value} for PL_METRICS (NaN where nothing was accepted), plus 'intervals'.
  """
  def values(metric):
    steps, v = series.get(f'train/pl/{source}/{metric}', (np.zeros(0), np.zeros(0)))
    return v[steps >= since]
  recall, acc = values('recall'), values('accuracy')
  out = {'intervals': int(recall.size)}
  if not recall.size:
    return {**out, **{m: float('nan') for m in PL_METRICS}}
  out['recall'] = float(recall.mean())
  ok = np.isfinite(acc) & (recall > 0)  # An interval that accepted nothing adds nothing.
  out['accuracy'] = (float(np.sum(acc[ok] * recall[ok]) / np.sum(recall[ok])) if ok.any()
                     else float('nan'))
  for m in ('accuracy_all', 'precision'):
    v = values(m)
    v = v[np.isfinite(v)]
    out[m] = float(v.mean()) if v.size else float('nan')
  return out


def load_run(workdir: str) -> dict[str, Any]:
  """Everything the report reads from a workdir (None or empty where a file is missing)."""
  evals = {}
  for path in glob.glob(os.path.join(workdir, 'eval', 'step_*.json')):
    step = re.fullmatch(r'step_(\d+)\.json', os.path.basename(path))
    if step:
      evals[int(step.group(1))] = read_json(path)
  predictions = {}
  for path in sorted(glob.glob(os.path.join(workdir, 'eval', 'predictions_*.npz'))):
    predictions[os.path.basename(path)[len('predictions_'):-len('.npz')]] = load_npz(path)
  heldout = {}  # Out-of-region predictions that --mode=eval_shift leaves: {split: {branch: ..}}.
  for path in sorted(glob.glob(os.path.join(workdir, 'shift_eval', 'predictions_heldout*.npz'))):
    split, branch = os.path.basename(path)[len('predictions_'):-len('.npz')].rsplit('_', 1)
    heldout.setdefault(split, {})[branch] = load_npz(path)
  return {'config': read_json(os.path.join(workdir, 'config.json')) or {},
          'final': read_json(os.path.join(workdir, 'final_metrics.json')),
          'versions': read_json(os.path.join(workdir, 'versions.json')),
          'series': read_metrics(os.path.join(workdir, 'metrics.jsonl')),
          'evals': dict(sorted(evals.items())), 'predictions': predictions,
          'heldout': heldout}


def load_npz(path: str) -> dict[str, np.ndarray]:
  arrays = {}
  with np.load(path) as z:  # No pickles: an object array (e.g. str as objects) is skipped.
    for k in z.files:
      try:
        arrays[k] = z[k]
      except ValueError:
        continue
  return arrays


def class_names(config: dict, num_classes: int) -> list[str]:
  """Names from the prepared dataset's info when reachable and of the right size, else indices."""
  data = config.get('data', {})
  try:
    from stssl_jax.data import records  # Imports TFDS: only when a report needs names.
    info = records.load_info(data['data_dir'], data['name'])
  except (OSError, KeyError, ValueError, ImportError):  # Unreachable dataset: no names.
    return [str(i) for i in range(num_classes)]
  suffix = str(data.get('label_set', 'label'))[len('label'):]  # 'label19' -> class_names19.
  for key in (f'class_names{suffix}', 'class_names'):
    names = info.get(key)
    if names is not None and len(names) == num_classes:
      return [str(n) for n in names]
  return [str(i) for i in range(num_classes)]


def sample_scores(arrays: dict, multilabel: bool, f1_threshold: float = 0.5) -> np.ndarray:
  """[N] per-sample score: single-label 1.0/0.0 (argmax correct), multi-label sample F1.

  Multi-label predictions are `logit > f1_threshold` as in the reported F1 (METHOD 9); a sample
  with no true and no predicted label scores 1.
  """
  logits, label = np.asarray(arrays['logits']), np.asarray(arrays['label'])
  if not multilabel:
    return (logits.argmax(-1) == label).astype(np.float64)
  pred = logits > f1_threshold
  tp = np.sum(pred & (label > 0), axis=-1)
  den = pred.sum(-1) + (label > 0).sum(-1)
  return np.where(den > 0, 2 * tp / np.maximum(den, 1), 1.0)


def group_metrics(arrays: dict, field: str, multilabel: bool,
                  f1_threshold: float = 0.5) -> list[dict[str, Any]]:
  """Metrics per value of `arrays[field]` ([N] str, e.g. 'country' or 'season').

  Returns:
    rows {'group', 'n', then single-label 'accuracy'; multi-label 'micro_map', 'macro_map'
    (mean AP over the classes with a positive in the group: a class absent from a small group
    would add a meaningless 0), 'sample_f1'}, seasons in calendar order, else by size.
  """
  groups = np.asarray(arrays[field]).astype(str)
  scores = sample_scores(arrays, multilabel, f1_threshold)
  rows = []
  for g in np.unique(groups):
    sel = groups == g
    row = {'group': str(g), 'n': int(sel.sum())}
    if multilabel:
      probs = 1.0 / (1.0 + np.exp(-np.asarray(arrays['logits'], np.float64)[sel]))
      label = np.asarray(arrays['label'])[sel]
      present = np.flatnonzero(label.sum(0) > 0)
      row['micro_map'] = metrics_ml.average_precision(probs.ravel(), label.ravel())
      row['macro_map'] = float(np.mean([metrics_ml.average_precision(probs[:, c], label[:, c])
                                        for c in present])) if len(present) else 0.0
      row['sample_f1'] = float(scores[sel].mean())
    else:
      row['accuracy'] = float(scores[sel].mean())
    rows.append(row)
  seasonal = all(r['group'].lower() in SEASONS for r in rows)
  return sorted(rows, key=(lambda r: SEASONS.index(r['group'].lower())) if seasonal else
                (lambda r: (r['group'] == OTHER, -r['n'], r['group'])))


MIN_GROUP = 30  # Smaller per-country/season groups give noise, not a readable bar.
OTHER = 'other'


def lump_small_groups(values: np.ndarray, min_n: Optional[int] = None) -> np.ndarray:
  """str [N] with every value that occurs fewer than min_n times replaced by OTHER.

  min_n defaults to 1% of N, at most MIN_GROUP: EuroSAT's 5,000 test images reverse-geocode
  to some 30 countries, a few with 2-5 images.
  """
  values = np.asarray(values).astype(str)
  if min_n is None:
    min_n = min(MIN_GROUP, math.ceil(0.01 * len(values)))
  names, counts = np.unique(values, return_counts=True)
  small = names[counts < min_n]
  return np.where(np.isin(values, small), OTHER, values) if small.size else values


def with_countries(arrays: dict) -> dict:
  """`arrays` with a 'country' field: the records' own, else (EuroSAT has none) ISO codes
  reverse-geocoded offline from lat/lon when the [geo] extra is installed; else unchanged."""
  if 'country' in arrays or 'lat' not in arrays or not len(arrays['lat']):
    return arrays
  try:
    from stssl_jax import regions  # pylint: disable=g-import-not-at-top
    codes = regions.country_codes(arrays['lat'], arrays['lon'])
  except (ImportError, ValueError):  # No offline geocoder: no per-country table.
    return arrays
  return dict(arrays, country=np.asarray(codes, dtype=str), country_geocoded=True)


def heldout_regions(config: dict, heldout: dict) -> dict[str, str]:
  """{split: region description} from the prepared dataset's info, when it is reachable."""
  if not heldout:
    return {}
  data = config.get('data', {})
  try:
    from stssl_jax import regions  # pylint: disable=g-import-not-at-top
    from stssl_jax.data import records  # pylint: disable=g-import-not-at-top
    return regions.region_names(records.load_info(data['data_dir'], data['name']))
  except (OSError, KeyError, ValueError, ImportError):
    return {}
