"""Configs as plain dotted names: flattening, and the closest names to a mistyped one."""

from __future__ import annotations

import difflib
from typing import Any, Iterable


def flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  """Nested dicts -> {'a.b.c': leaf}."""
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for k, v in tree.items():
    out.update(flatten(v, f'{prefix}{k}.'))
  return out


def suggest(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
  """Closest valid dotted names to a mistyped `name`: by the whole name, then by its last part
  (so 'optim.lr' finds 'lr' and 'data.imagesize' finds 'data.image_size')."""
  valid = list(valid)
  out = difflib.get_close_matches(name, valid, n=n, cutoff=0.8)
  last = name.rsplit('.', 1)[-1]
  close = set(difflib.get_close_matches(last, {v.rsplit('.', 1)[-1] for v in valid}, n=n,
                                        cutoff=0.75))
  out += [v for v in valid if v.rsplit('.', 1)[-1] in close and v not in out]
  return out[:n]


def unknown_overrides(argv: Iterable[str], config_tree: dict) -> list[str]:
  """One message per `--config.NAME[=value]` in argv whose NAME is not a config field."""
  valid = flatten(config_tree)
  groups = {k.rsplit('.', i)[0] for k in valid for i in range(1, k.count('.') + 1)}
  out = []
  for a in argv:
    if not a.startswith('--config.'):
      continue
    name = a[len('--config.'):].split('=', 1)[0]
    if name in valid or name in groups:
      continue
    close = suggest(name, valid)
    hint = f'did you mean {", ".join(close)}?' if close else 'see configs/default.py'
    out.append(f'unknown config field {name!r} (--config.{name}); {hint}')
  return out
