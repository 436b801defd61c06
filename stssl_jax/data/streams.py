"""grain MapDataset building blocks of the training streams: a record cache and two samplers.

  PreparedRecords  record -> {image prepared once (resized / clip-scaled), label, meta},
                   memoised per process within a byte budget.
  EpochShuffle     'seeded' sampler: infinite, a fresh permutation per pass over the split,
                   seeded by (stream seed, pass).
  OriginalSampler  'original' sampler (METHOD 3.6): the released USB sampler, seeded by
                   the epoch index only.

Both samplers are pure functions of the element index, so any element can be produced
in any order (random access for grain workers, exact resume from an index).
"""

import sys
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np


class PreparedRecords(grain.MapDataset):
  """record -> prepare(record): the image transformed once, plus label and metadata.

  Records are memoised per process until `max_cache_bytes` of prepared images are held
  (the first ones read stay; the rest are prepared on every read). Reading and decoding a
  record costs ~130 us and resizing or clip-scaling it 40-1500 us, often more than the
  view itself; EuroSAT's 21,600 training images take 66 MB at 32 px (METHOD 3.2 and 3.5
  recommend preparing once). Each grain worker process fills its own cache.
  """

  def __init__(self, parent: grain.MapDataset,
               prepare: Callable[[Mapping[str, Any]], dict[str, Any]],
               bytes_per_record: int, max_cache_bytes: int = 1 << 30):
    super().__init__(parent)
    self._prepare = prepare
    self._bytes_per_record = max(1, bytes_per_record)
    self._max_records = max_cache_bytes // self._bytes_per_record
    self._cache: dict[int, dict[str, Any]] = {}

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f'PreparedRecords(cache up to {self._max_records} records)'

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._getitems([index])[0]

  def _getitems(self, indices: Sequence[int]):
    indices = [i % len(self._parent) for i in indices]
    missing = sorted({i for i in indices if i not in self._cache})
    read = self._parent._getitems(missing)  # pylint: disable=protected-access
    fresh = dict(zip(missing, map(self._prepare, read)))
    for i in missing:
      if len(self._cache) >= self._max_records:
        break
      self._cache[i] = fresh[i]
    return [self._cache[i] if i in self._cache else fresh[i] for i in indices]

  def __getstate__(self):
    # Worker processes start with an empty cache instead of a pickled copy.
    return {**self.__dict__, '_cache': {}}


class EpochShuffle(grain.MapDataset):
  """Infinite MapDataset: a fresh seeded permutation of the parent for every pass.

  Element i is parent[perm_e[i mod N]] with e = i // N and perm_e =
  default_rng([seed, e]).permutation(N). Same contract as grain's `shuffle().repeat()`,
  but grain's per-index `index_shuffle` costs 0.2-4 ms per element on the tiny labeled
  splits (N = 10..80), while one permutation per pass is microseconds.
  """

  _MAX_CACHED_EPOCHS = 4

  def __init__(self, parent: grain.MapDataset, seed: int):
    super().__init__(parent)
    if not len(parent):
      raise ValueError('Cannot shuffle an empty split')
    self._seed = seed
    self._perms: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'EpochShuffle(seed={self._seed})'

  def _permutation(self, epoch: int) -> np.ndarray:
    perm = self._perms.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(len(self._parent))
      # Readers move forward through epochs; keep only the most recent few.
      while len(self._perms) >= self._MAX_CACHED_EPOCHS:
        self._perms.pop(min(self._perms))
      self._perms[epoch] = perm
    return perm

  def _source_index(self, index: int) -> int:
    epoch, position = divmod(index, len(self._parent))
    return int(self._permutation(epoch)[position])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._source_index(index)]

  def _getitems(self, indices: Sequence[int]):
    source_indices = [self._source_index(i) for i in indices]
    return self._parent._getitems(source_indices)  # pylint: disable=protected-access

  def __getstate__(self):
    # Workers rebuild their own cache.
    return {**self.__dict__, '_perms': {}}


class OriginalSampler(grain.MapDataset):
  """The released sampler (METHOD 3.6), as an infinite MapDataset.

  Training is cut into "epochs" of L = steps_per_epoch * global_batch elements. Epoch e
  is the concatenation of permutations p_e0, p_e1, ... of the parent, cut to L (so whole
  permutations, then a prefix of one more), all drawn in sequence from one generator
  seeded with e alone: element i is parent[p_ek[j]] with (e, r) = divmod(i, L),
  (k, j) = divmod(r, N), p_ek the k-th `permutation(N)` of default_rng(e).

  Differences from the 'seeded' EpochShuffle: the order ignores the run seed (and the
  stream), so labeled and unlabeled samplers of equal-sized splits give the same order
  and every run sees the same data order; and each epoch restarts the permutation
  sequence, so epoch boundaries need not fall on whole passes. The released code used
  torch's generator, so the orders themselves are not reproduced, only their structure.
  """

  _MAX_CACHED = 4

  def __init__(self, parent: grain.MapDataset, samples_per_epoch: int):
    super().__init__(parent)
    if not len(parent):
      raise ValueError('Cannot sample an empty split')
    if samples_per_epoch < 1:
      raise ValueError(f'samples_per_epoch must be >= 1, got {samples_per_epoch}')
    self._per_epoch = samples_per_epoch
    self._perms: dict[tuple[int, int], np.ndarray] = {}
    self._cursor = None  # (epoch, k, generator positioned after permutation k).

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f'OriginalSampler(samples_per_epoch={self._per_epoch})'

  def _permutation(self, epoch: int, k: int) -> np.ndarray:
    perm = self._perms.get((epoch, k))
    if perm is not None:
      return perm
    # Generators only move forward: continue from the cursor when it is before (epoch, k).
    if self._cursor is not None and self._cursor[0] == epoch and self._cursor[1] < k:
      _, j, rng = self._cursor
    else:
      j, rng = -1, np.random.default_rng(epoch)
    while j < k:
      perm, j = rng.permutation(len(self._parent)), j + 1
    self._cursor = (epoch, k, rng)
    while len(self._perms) >= self._MAX_CACHED:
      self._perms.pop(min(self._perms))
    self._perms[(epoch, k)] = perm
    return perm

  def source_index(self, index: int) -> int:
    """Parent index of element `index`."""
    epoch, r = divmod(index, self._per_epoch)
    k, j = divmod(r, len(self._parent))
    return int(self._permutation(epoch, k)[j])

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self.source_index(index)]

  def _getitems(self, indices: Sequence[int]):
    source_indices = [self.source_index(i) for i in indices]
    return self._parent._getitems(source_indices)  # pylint: disable=protected-access

  def __getstate__(self):
    return {**self.__dict__, '_perms': {}, '_cursor': None}
