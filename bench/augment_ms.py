"""Multi-band transform speed: microseconds per image for every op and view, C = 3 and 12.

  python bench/augment_ms.py                 # 128 px, 200 images per measurement
  MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=268435456 python bench/augment_ms.py

Prints one row per op (kornia_0_7_2 magnitudes) and per view: `prepare` (clip-scale +
resize + float16, once per record when cached), `weak`, `strong` (weak + 3 ops), and
`strong+hwc` (what a pipeline worker does per unlabeled strong view). Each number is the
best of 5 runs. glibc returning freed memory to the OS makes every fresh NumPy array page
fault; the second command keeps it, which is often ~2x faster (set it for data workers).
Only ratios within one run are meaningful on a shared machine.
"""

import argparse
import os
import sys
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from stssl_jax.data import augment_ms


def _us(fn, number):
  return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--size', type=int, default=128)
  parser.add_argument('--number', type=int, default=200)
  args = parser.parse_args()
  policy = augment_ms.DEFAULT_POLICY
  rows = {}
  for c in (3, 12):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 3000, (120, 120, c), dtype=np.uint16)
    mean, std = np.full(c, 590.0), np.full(c, 676.0)
    v = augment_ms.prepare(raw, mean, std, args.size)
    x = augment_ms.weak(v, rng)
    for (name, _, _), mag in zip(policy.ops, policy.magnitudes()):
      rows.setdefault(name, {})[c] = _us(
          lambda n=name, m=mag: augment_ms.apply_op(x, n, m, 0.7, policy), args.number)
    seeds = iter(range(10**9))
    views = {
        'prepare': lambda: augment_ms.prepare(raw, mean, std, args.size),
        'weak': lambda: augment_ms.weak(v, np.random.default_rng(next(seeds))),
        'strong': lambda: augment_ms.strong(v, np.random.default_rng(next(seeds))),
        'strong+hwc': lambda: augment_ms.to_hwc(
            augment_ms.strong(v, np.random.default_rng(next(seeds)))),
    }
    for name, fn in views.items():
      rows.setdefault(name, {})[c] = _us(fn, args.number)
  print(f'{"us per image @ " + str(args.size) + " px":24s} {"C=3":>8s} {"C=12":>8s}')
  for name, r in rows.items():
    print(f'{name:24s} {r[3]:8.0f} {r[12]:8.0f}')


if __name__ == '__main__':
  main()
