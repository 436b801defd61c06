"""Data-prep throughput: EuroSAT and BigEarthNet records/s, 1 vs 2 workers, full-archive ETA.

  python bench/data_prep.py
  python bench/data_prep.py --repeats 200 --workers 1,2,4

EuroSAT: `data_prep.eurosat.prepare` on the bundled 300-image sample (single process: the
EuroSAT converter has no worker option), best of --eurosat_runs.

BigEarthNet: the 14 bundled real patches repeated --repeats times under new names (symlinks
to the same files, so the reads hit the page cache, not a cold disk) and converted with
`data_prep.bigearthnet.prepare` for each worker count and band set; the wall time covers
start-up, conversion (spawned worker processes) and assembly. The per-patch cost is also
timed in-process (read_patch + encode + serialise, median of --patch_reps passes).

Extrapolation to the 590,326 patches of BigEarthNet-S2 v1.0 assumes linear scaling with
cores (each patch is independent; no disk or page-cache limit), i.e. T(P) = N * c / P with
c the in-process per-patch cost or the measured CPU time per record (user + system, all
processes; robust to other load on the machine), and the measured 2-worker conversion rate
scaled by P / 2.
"""

import argparse
import contextlib
import io
import os
import pathlib
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import bigearthnet  # pylint: disable=g-import-not-at-top
from data_prep import eurosat  # pylint: disable=g-import-not-at-top
from data_prep import bigearthnet_labels  # pylint: disable=g-import-not-at-top
from stssl_jax.data import records  # pylint: disable=g-import-not-at-top

REPO = pathlib.Path(__file__).resolve().parent.parent
BEN_SAMPLE = REPO / 'data' / 'bigearthnet_sample' / 'BigEarthNet-v1.0'
ES_SAMPLE = REPO / 'data' / 'eurosat_sample'
BEN_SIZE = 590_326


def replicate(tmp: pathlib.Path, repeats: int) -> tuple[pathlib.Path, pathlib.Path]:
  """Symlinked copies `<patch>_r<k>` of the 14 patches + train/val/test lists of them."""
  root, lists = tmp / 'images', tmp / 'lists'
  lists.mkdir(parents=True)
  names = []
  for src in sorted(p for p in BEN_SAMPLE.iterdir() if p.is_dir()):
    for k in range(repeats):
      name = f'{src.name}_r{k}'
      (root / name).mkdir(parents=True)
      for f in src.iterdir():
        (root / name / f.name.replace(src.name, name)).symlink_to(f)
      names.append(name)
  # Every 10th patch to val, every 10th + 1 to test, the rest to train.
  for r, split in enumerate(('val', 'test')):
    (lists / f'{split}.txt').write_text('\n'.join(names[r::10]))
  (lists / 'train.txt').write_text('\n'.join(n for i, n in enumerate(names) if i % 10 > 1))
  return root, lists


def eurosat_rate(runs: int) -> dict:
  """Best-of-runs images/s and CPU ms per image of the EuroSAT sample prep."""
  best, best_cpu = float('inf'), float('inf')
  for _ in range(runs):
    out = tempfile.mkdtemp(prefix='bench_es_')
    try:
      t, cpu = time.perf_counter(), cpu_seconds()
      with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints a line per build.
        eurosat.prepare(str(ES_SAMPLE / '2750'), out, str(ES_SAMPLE / 'coords.csv'))
      best = min(best, time.perf_counter() - t)
      best_cpu = min(best_cpu, cpu_seconds() - cpu)
    finally:
      shutil.rmtree(out)
  return {'rate': 300 / best, 'cpu_ms': best_cpu / 300 * 1e3}


def cpu_seconds() -> float:
  """User + system CPU time of this process and of its finished child processes."""
  return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                               resource.getrusage(resource.RUSAGE_CHILDREN)))


def ben_run(root, lists, bands: str, workers: int, shard_size: int) -> dict:
  out = tempfile.mkdtemp(prefix='bench_ben_')
  try:
    t, cpu = time.perf_counter(), cpu_seconds()
    result = bigearthnet.prepare(str(root), out, str(lists), bands=bands, workers=workers,
                                 shard_size=shard_size)
    wall, cpu = time.perf_counter() - t, cpu_seconds() - cpu
  finally:
    shutil.rmtree(out)
  n = sum(v for k, v in result['splits'].items() if not k.startswith('train_lb'))
  convert_s = result['timings']['convert_s']
  return {'n': n, 'wall': wall, 'rate': n / wall, 'convert_rate': n / convert_s,
          'cpu_ms': cpu / n * 1e3}


def patch_cost(bands: str, reps: int) -> float:
  """Median seconds per patch of read_patch + encode + serialise, in this process."""
  band_names = bigearthnet_labels.parse_bands(bands)
  schema = bigearthnet.schema_for(band_names)
  features = schema.features()
  names = sorted(p.name for p in BEN_SAMPLE.iterdir() if p.is_dir())
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for i, name in enumerate(names):
      ex = bigearthnet.read_patch((name, '', '', None, None), str(BEN_SAMPLE), band_names)
      ex.pop('_latlon_dev_m')
      ex['index'] = i
      features.serialize_example(records.encode(ex, schema))
    times.append((time.perf_counter() - t) / len(names))
  return statistics.median(times)


def hms(seconds: float) -> str:
  return f'{seconds / 3600:.2f} h' if seconds >= 3600 else f'{seconds / 60:.1f} min'


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--repeats', type=int, default=100, help='copies of the 14 patches')
  ap.add_argument('--workers', default='1,2')
  ap.add_argument('--bands', default='rgb,all')
  ap.add_argument('--shard_size', type=int, default=100)
  ap.add_argument('--eurosat_runs', type=int, default=3)
  ap.add_argument('--patch_reps', type=int, default=20)
  args = ap.parse_args()
  workers = [int(w) for w in args.workers.split(',')]
  band_sets = args.bands.split(',')
  print(f'machine: {os.cpu_count()} cores')
  load = ', '.join(f'{x:.1f}' for x in os.getloadavg())
  es = eurosat_rate(args.eurosat_runs)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='bench_ben_src_'))
  try:
    root, lists = replicate(tmp, args.repeats)
    runs = {(b, w): ben_run(root, lists, b, w, args.shard_size) for b in band_sets
            for w in workers}
  finally:
    shutil.rmtree(tmp)
  cost = {b: patch_cost(b, args.patch_reps) for b in band_sets}

  print(f'load average before the runs: {load}')
  print(f'\n{"dataset":<22}{"bands":>6}{"workers":>8}{"records":>9}{"wall s":>9}'
        f'{"rec/s":>9}{"convert rec/s":>15}{"cpu ms/rec":>12}')
  print(f'{"eurosat (sample)":<22}{"rgb":>6}{1:>8}{300:>9}{300 / es["rate"]:>9.2f}'
        f'{es["rate"]:>9.1f}{"-":>15}{es["cpu_ms"]:>12.2f}')
  for (b, w), r in runs.items():
    print(f'{"bigearthnet (14 x " + str(args.repeats) + ")":<22}{b:>6}{w:>8}{r["n"]:>9}'
          f'{r["wall"]:>9.2f}{r["rate"]:>9.1f}{r["convert_rate"]:>15.1f}{r["cpu_ms"]:>12.2f}')
  print('\nratios (workers w vs 1 worker; wall rec/s, convert rec/s):')
  for b in band_sets:
    for w in workers[1:]:
      one, many = runs[(b, workers[0])], runs[(b, w)]
      print(f'  bigearthnet {b}: {w} vs {workers[0]}: {many["rate"] / one["rate"]:.2f}x wall, '
            f'{many["convert_rate"] / one["convert_rate"]:.2f}x convert')
  print('\nper-patch cost in one process (read + encode + serialise):')
  for b in band_sets:
    print(f'  {b}: {cost[b] * 1e3:.2f} ms/patch = {1 / cost[b]:.0f} patches/s per core')
  print(f'\nextrapolated conversion of all {BEN_SIZE:,} BigEarthNet patches '
        '(linear scaling with cores, warm cache, no disk limit):')
  for b in band_sets:
    print(f'  {b}: from the per-patch cost: ' +
          ', '.join(f'{p} cores {hms(BEN_SIZE * cost[b] / p)}' for p in (2, 32)))
    cpu = max(r['cpu_ms'] for (b2, _), r in runs.items() if b2 == b) / 1e3
    print(f'  {b}: from the end-to-end CPU time per record ({cpu * 1e3:.2f} ms, the larger '
          'of the worker counts): ' +
          ', '.join(f'{p} cores {hms(BEN_SIZE * cpu / p)}' for p in (2, 32)))
    two = runs.get((b, 2))
    if two:
      print(f'  {b}: from the measured 2-worker conversion rate x P/2: ' +
            ', '.join(f'{p} cores {hms(BEN_SIZE / (two["convert_rate"] * p / 2))}'
                      for p in (2, 32)))


if __name__ == '__main__':
  main()
