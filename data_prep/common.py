"""Helpers shared by the data_prep scripts: raw folder discovery, bad-file policy, re-runs.

The record schema and the atomic writer live in `stssl_jax/data/records.py`; this module only
holds what every raw-dataset converter needs before it hands examples to that writer.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable, Iterable, Mapping

from stssl_jax.data import records


class PrepError(Exception):
  """A raw input problem; the message names the offending file or field."""


@dataclasses.dataclass
class BadFiles:
  """Collects unusable inputs: raises at the first one unless `skip` is set.

  Attributes:
    skip: keep going and remember the file instead of raising.
    items: (file, reason) pairs recorded so far.
  """
  skip: bool
  items: list[tuple[str, str]] = dataclasses.field(default_factory=list)

  def add(self, file: str, reason: str) -> None:
    if not self.skip:
      raise PrepError(f'{file}: {reason} (pass --skip_bad to skip such files)')
    self.items.append((file, reason))

  def as_metadata(self) -> list[dict[str, str]]:
    return [{'file': f, 'reason': r} for f, r in self.items]

  def report(self) -> str:
    if not self.items:
      return 'No bad files.'
    lines = [f'Skipped {len(self.items)} bad file(s):']
    lines += [f'  {f}: {r}' for f, r in self.items]
    return '\n'.join(lines)


def _visible_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  """Sub-folders, sorted, without hidden ones and `__MACOSX`/`__pycache__`-style clutter."""
  return sorted(d for d in folder.iterdir()
                if d.is_dir() and not d.name.startswith(('.', '__')))


def _has_files(folder: pathlib.Path, exts: Iterable[str]) -> bool:
  return any(p.suffix.lower() in exts for p in folder.iterdir() if p.is_file())


def find_class_root(images: str | pathlib.Path, exts: Iterable[str], max_depth: int = 8
                    ) -> pathlib.Path:
  """Finds the folder holding one sub-folder of image files per class.

  `images` may be that folder or an ancestor reached through single sub-folders only (e.g.
  the parent of EuroSAT's `2750/`), so an ambiguous tree is an error rather than a guess.

  Args:
    images: the --images argument.
    exts: lower-case file suffixes that count as images, e.g. ('.jpg', '.jpeg').
    max_depth: how many single-child levels to descend at most.

  Returns:
    The class root.

  Raises:
    PrepError: naming `images` when no unambiguous class root exists.
  """
  exts = tuple(exts)
  root = pathlib.Path(images)
  if not root.is_dir():
    raise PrepError(f'--images {root}: not a directory')
  cur = root
  for _ in range(max_depth + 1):
    subdirs = _visible_dirs(cur)
    if any(_has_files(d, exts) for d in subdirs):
      return cur
    if len(subdirs) != 1:
      names = [d.name for d in subdirs][:10]
      raise PrepError(
          f'--images {root}: no class folders with {"/".join(exts)} files under {cur} '
          f'(sub-folders: {names}); point --images at the folder holding one folder per class')
    cur = subdirs[0]
  raise PrepError(f'--images {root}: no class folders found within {max_depth} levels')


def list_class_files(class_root: pathlib.Path, exts: Iterable[str]
                     ) -> tuple[list[str], list[list[str]]]:
  """Lists classes (sorted folder names) and each class's files sorted as strings.

  Both sorts are Python string order, i.e. torchvision ImageFolder's order
  (`_1, _10, _100, _1000, ...`), which METHOD 3.1's split depends on.

  Args:
    class_root: folder with one sub-folder per class.
    exts: lower-case image suffixes.

  Returns:
    (class_names [C], files [C][n_c]) with files as 'Class/name.ext' relative paths.

  Raises:
    PrepError: naming the class folder that holds no image.
  """
  exts = tuple(exts)
  classes = [d.name for d in _visible_dirs(class_root)]
  files = []
  for c in classes:
    # Hidden files are skipped: macOS zips add `._<name>.jpg` resource forks.
    names = sorted(p.name for p in (class_root / c).iterdir()
                   if p.is_file() and p.suffix.lower() in exts and not p.name.startswith('.'))
    if not names:
      raise PrepError(f'{class_root / c}: class folder without {"/".join(exts)} files')
    files.append([f'{c}/{n}' for n in names])
  return classes, files


def check_existing(out: str | pathlib.Path, name: str, prep: Mapping[str, Any],
                   overwrite: bool) -> bool:
  """Decides what to do with an existing output.

  Args:
    out: the --out data_dir.
    name: dataset name.
    prep: JSON-serialisable settings of this run (stored as metadata 'prep').
    overwrite: the --overwrite flag.

  Returns:
    True if a complete dataset with the same settings exists and nothing needs doing.

  Raises:
    PrepError: if a dataset prepared with different settings exists and overwrite is off.
  """
  if overwrite or not records.is_prepared(out, name):
    return False
  stored = records.load_info(out, name).get('prep')
  wanted = json.loads(json.dumps(dict(prep)))  # Same JSON types as the stored copy.
  if stored != wanted:
    stored = stored if isinstance(stored, dict) else {}
    diff = {k: f'{stored.get(k)!r} -> {wanted.get(k)!r}'
            for k in sorted(set(stored) | set(wanted)) if stored.get(k) != wanted.get(k)}
    raise PrepError(f'{records.dataset_dir(out, name)} was prepared with different settings '
                    f'({diff}); pass --overwrite to rebuild it')
  # Same settings: only an intact dataset counts as prepared (sizes and SHA-256 of every
  # shard against those recorded when it was written).
  problems = records.verify(out, name)
  if problems:
    raise PrepError(f'{records.dataset_dir(out, name)} is damaged: {"; ".join(problems)}; pass '
                    '--overwrite to rebuild it')
  return True


def already_prepared(out: str | pathlib.Path, name: str, prep: Mapping[str, Any],
                     overwrite: bool) -> dict[str, Any] | None:
  """The CLIs' result for an intact dataset with these settings, else None (prepare it).

  Raises:
    PrepError: other settings, a damaged dataset (`check_existing`), or an output folder that
      is not a complete dataset of this schema, unless overwrite.
  """
  if check_existing(out, name, prep, overwrite):
    return {'status': 'already prepared', 'path': str(records.dataset_dir(out, name)),
            'splits': records.load_info(out, name)['splits'], 'skipped': []}
  if records.dataset_root(out, name).exists() and not overwrite:
    raise PrepError(f'{records.dataset_root(out, name)} exists but is not a complete schema-'
                    f'{records.SCHEMA_VERSION} dataset; pass --overwrite to replace it')
  return None


def run_and_report(run: Callable[[], dict], skip_bad: bool) -> int:
  """Runs a `prepare` call for a CLI: prints the result or the error; returns the exit code."""
  start = time.time()
  try:
    result = run()
  except (PrepError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  print(f'{result["status"]}: {result["path"]} ({time.time() - start:.1f} s)')
  print('splits: ' + ', '.join(f'{k} {v}' for k, v in result['splits'].items()))
  if skip_bad and result['status'] == 'prepared':
    print(BadFiles(skip=True, items=result['skipped']).report())
  return 0
