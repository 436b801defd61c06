"""Entry point: `python main.py --config=configs/eurosat.py[:arg] --workdir=DIR`.

Override any config field with `--config.x=...`; an unknown field is an error. Running the
same command again resumes from the newest checkpoint in the workdir.
Multi-host: pass --jax_distributed (TPU pods and SLURM/Open MPI clusters are detected by
jax.distributed.initialize), or --coordinator_address/--num_processes/--process_id.
"""

import importlib.util
import json
import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/*.py[:arg]).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and logs.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval_shift', 'report'],
                          'train (resumes by itself), eval_shift (metadata-shift evaluation of '
                          'a trained workdir) or report (HTML run report of a workdir).')
_DIST = flags.DEFINE_bool('jax_distributed', False, 'Call jax.distributed.initialize().')
_COORD = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0.')
_NPROC = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PID = flags.DEFINE_integer('process_id', None, 'This process index.')
_ALLOW = flags.DEFINE_bool('allow_config_change', False,
                           'Resume a workdir although config fields outside the resumable ones '
                           '(workdir.RESUMABLE_CHANGES) differ from its config.json; the change '
                           'is recorded in WORKDIR/config_history.jsonl.')
flags.mark_flags_as_required(['workdir'])


def _quiet_orbax(record) -> bool:
  """Drops orbax's per-save INFO chatter; its warnings and errors still show."""
  return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def _load_config_tree(spec: str) -> dict:
  """The config that --config=PATH[:ARG] names, as plain JSON values (no overrides)."""
  path, _, arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_stssl_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg) if arg else module.get_config()
  return json.loads(config.to_json_best_effort())


def parse_flags(argv):
  """absl's flag parsing, with one-line errors for unknown or badly typed config fields."""
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec and any(a.startswith('--config.') for a in argv):
    try:
      tree = _load_config_tree(spec)
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(f'error: --config={spec}: {type(e).__name__}: {e}')
    from stssl_jax import config_util  # pylint: disable=g-import-not-at-top
    problems = config_util.unknown_overrides(argv, tree)
    if problems:
      sys.exit('error: ' + '; '.join(problems))
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'error: {e}')


def main(argv):
  del argv
  logging.get_absl_handler().addFilter(_quiet_orbax)
  import jax  # Imported after flag parsing so that distributed init comes first.
  if _DIST.value or _COORD.value:
    jax.distributed.initialize(coordinator_address=_COORD.value, num_processes=_NPROC.value,
                               process_id=_PID.value)
  if _MODE.value == 'report':
    from stssl_jax import report  # pylint: disable=g-import-not-at-top
    print('Report:', report.write_report(_WORKDIR.value))
    return
  if _CONFIG.value is None:
    raise app.UsageError('--config is required for --mode=train and --mode=eval_shift')
  if _MODE.value == 'eval_shift':
    from stssl_jax import shift_eval  # pylint: disable=g-import-not-at-top
    shift_eval.run(_CONFIG.value, _WORKDIR.value)
    print(open(f'{_WORKDIR.value}/shift_eval/shift_eval.md').read())
    return
  from stssl_jax import train  # pylint: disable=g-import-not-at-top
  from stssl_jax.data import records  # pylint: disable=g-import-not-at-top
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value,
                                      allow_config_change=_ALLOW.value)
  except (ValueError, FileNotFoundError, FloatingPointError, records.CorruptShard) as e:
    # Each names its file, field or step: one line, no traceback.
    sys.exit(f'error: {e}')
  if jax.process_index() == 0:
    print('Final evaluation (EMA weights, eval split):')
    for k in sorted(result):
      print(f'  {k}: {result[k]}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
