"""Named fault-injection points, for proving that runs survive kills, full disks and NaNs.

The training loop calls `point(name, step)` at the moments where a crash is most harmful.
Nothing happens unless a fault is armed, either in-process (`arm`, tests) or through the
environment variable STSSL_FAULT="name@step:action[,name@step:action...]" (subprocess
tests and bench/soak.py), so production runs pay one dict lookup per call.

Points (see train.py):
  batch             a training batch before the step runs (action 'nan' poisons it)
  eval              before an evaluation
  after_best_save   after the best checkpoint's save was issued, before the resume one
  after_save        after the resume checkpoint's (async) save was issued, still in flight
Actions: 'kill' (SIGKILL of this process: nothing is cleaned up), 'kill_settled' (SIGKILL once
the in-flight saves are committed: `settle` is called first), 'raise' (RuntimeError),
'enospc' (OSError ENOSPC, as from a full disk), 'nan' (returned to the caller to act on).
"""

import errno
import os
import signal
from typing import Callable, Optional

_ENV = 'STSSL_FAULT'
_ARMED: dict[tuple[str, int], str] = {}


def _parse(spec: str) -> dict[tuple[str, int], str]:
  out = {}
  for item in filter(None, (s.strip() for s in spec.split(','))):
    try:
      where, action = item.split(':')
      name, step = where.split('@')
      out[(name, int(step))] = action
    except ValueError:
      raise ValueError(f'{_ENV}: {item!r} is not name@step:action') from None
  return out


def arm(name: str, step: int, action: str) -> None:
  """Arms one fault (in-process); `disarm()` clears them all."""
  _ARMED[(name, step)] = action


def disarm() -> None:
  _ARMED.clear()


def point(name: str, step: int, settle: Optional[Callable[[], None]] = None) -> Optional[str]:
  """Fires the fault armed at (name, step), if any; returns a non-fatal action's name."""
  action = _ARMED.pop((name, step), None)
  if action is None and os.environ.get(_ENV):
    action = _parse(os.environ[_ENV]).get((name, step))
  if action is None:
    return None
  if action == 'kill_settled' and settle is not None:
    settle()
  if action in ('kill', 'kill_settled'):
    os.kill(os.getpid(), signal.SIGKILL)
  if action == 'raise':
    raise RuntimeError(f'injected fault at {name}@{step}')
  if action == 'enospc':
    raise OSError(errno.ENOSPC, f'No space left on device (injected at {name}@{step})')
  return action
