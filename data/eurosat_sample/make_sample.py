"""Regenerates this sample from the shared EuroSAT archive (see PROVENANCE.md).

Writes, next to this file, `2750/<Class>/<Class>_<i>.jpg` for i = 1..30 of every class (the
original JPEG bytes, not re-encoded) and `coords.csv` (`filename,lat,lon`, full float64
precision, rows in the same order).

  .venv/bin/python data/eurosat_sample/make_sample.py /work/shared/data/eurosat_rgb/eurosat_rgb_jpeg.npz
"""

import csv
import pathlib
import re
import sys

import numpy as np

PER_CLASS = 30  # Numeric file indices 1..30: with the 80/20 split, 24 train / 6 test per class.


def main(npz_path: str) -> None:
  here = pathlib.Path(__file__).resolve().parent
  z = np.load(npz_path)
  data, offsets, filenames = z['jpeg_bytes'], z['jpeg_offsets'], z['filenames']
  rows = []
  for i, fname in enumerate(filenames):
    number = int(re.fullmatch(r'[A-Za-z]+/[A-Za-z]+_(\d+)\.jpg', str(fname)).group(1))
    if number > PER_CLASS:
      continue
    target = here / '2750' / str(fname)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data[offsets[i]:offsets[i + 1]].tobytes())
    rows.append((str(fname), repr(float(z['lat'][i])), repr(float(z['lon'][i]))))
  with open(here / 'coords.csv', 'w', newline='') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(('filename', 'lat', 'lon'))
    writer.writerows(rows)
  print(f'wrote {len(rows)} images and coords.csv under {here}')


if __name__ == '__main__':
  main(sys.argv[1])
