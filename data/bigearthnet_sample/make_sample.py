"""Regenerates this sample from the project's shared BigEarthNet material (see PROVENANCE.md).

Writes, next to this file:
  BigEarthNet-v1.0/<patch>/   the 14 patch folders, copied byte for byte;
  metadata.csv                the 14 rows of the shared per-patch metadata table;
  splits/{train,val,test}.csv the patches' official v1 split, plus the seasonal-snow patch
                              (in no official list) in train, to exercise the exclusion.

  .venv/bin/python data/bigearthnet_sample/make_sample.py /work/shared/data
"""

import csv
import pathlib
import shutil
import sys

import numpy as np

NOTICE = ('# Derived from BigEarthNet (CDLA-Permissive-1.0) by stssl-jax: rows selected from '
          'the official lists / metadata; see PROVENANCE.md\n')
SPLITS = ('train', 'val', 'test')


def main(shared: str) -> None:
  here = pathlib.Path(__file__).resolve().parent
  samples = pathlib.Path(shared) / 'bigearthnet_s2_samples'
  patches = sorted(p.name for p in samples.iterdir() if p.is_dir())
  for name in patches:
    target = here / 'BigEarthNet-v1.0' / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(samples / name, target)
  z = np.load(pathlib.Path(shared) / 'bigearthnet_metadata' /
              'bigearthnet_v1_s2_patch_metadata.npz')
  row = {n: i for i, n in enumerate(z['patch_name'].astype(str))}
  with open(here / 'metadata.csv', 'w', newline='') as f:
    f.write(NOTICE)
    w = csv.writer(f, lineterminator='\n')
    w.writerow(('patch', 'lat', 'lon', 'country', 'season', 'acq_date', 'utm_epsg', 'ulx', 'uly',
                'split_v1_official', 'seasonal_snow', 'cloud_or_shadow'))
    for name in patches:
      i = row[name]
      split = int(z['split_v1_official'][i])
      # float32 values written exactly (repr of the float64 they convert to).
      w.writerow((name, repr(float(z['lat'][i])), repr(float(z['lon'][i])),
                  str(z['country_names'][z['country'][i]]),
                  str(z['season_names'][z['season'][i]]), str(z['acq_date'][i]),
                  int(z['utm_epsg'][i]), int(z['ulx'][i]), int(z['uly'][i]),
                  SPLITS[split] if split >= 0 else '', bool(z['seasonal_snow'][i]),
                  bool(z['cloud_or_shadow'][i])))
  (here / 'splits').mkdir(exist_ok=True)
  for k, split in enumerate(SPLITS):
    names = [n for n in patches if z['split_v1_official'][row[n]] == k or
             (split == 'train' and z['seasonal_snow'][row[n]])]
    (here / 'splits' / f'{split}.csv').write_text(NOTICE + ''.join(f'{n}\n' for n in names))
  print(f'wrote {len(patches)} patches, metadata.csv and splits/ under {here}')


if __name__ == '__main__':
  main(sys.argv[1])
