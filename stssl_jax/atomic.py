"""Atomic writes of small result files: a reader (or a kill) never sees a partial file."""

import csv
import io
import json
import os
from typing import Any

import numpy as np


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` through a temporary file beside it and a rename."""
  tmp = os.path.join(os.path.dirname(path) or '.', f'.{os.path.basename(path)}.tmp')
  with open(tmp, 'w', newline='') as f:
    f.write(text)
  os.replace(tmp, path)
  return path


def write_csv(path: str, rows: list[dict]) -> str:
  """rows (dicts with the same keys, in order) as a CSV with a header line, atomically."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=list(rows[0]))
  w.writeheader()
  w.writerows(rows)
  return write_text(path, buf.getvalue())


def write_json(path: str, obj: Any, **kw) -> str:
  """json.dump of `obj` to `path`, atomically."""
  return write_text(path, json.dumps(obj, **kw))


def write_npz(path: str, **arrays) -> str:
  """np.savez of `arrays` to `path` (which should end in .npz), atomically."""
  tmp = os.path.join(os.path.dirname(path) or '.', f'.{os.path.basename(path)}.tmp.npz')
  np.savez(tmp, **arrays)
  os.replace(tmp, path)
  return path
