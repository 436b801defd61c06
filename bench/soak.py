"""Kill soak: SIGKILL a real `main.py` training process at random moments, resume, compare.

  python bench/soak.py                      # 30 kills, half of them while a save is in flight
  python bench/soak.py --kills 60 --seed 1

A baseline run trains the schedule below uninterrupted. Then kill series start in fresh
workdirs: each one re-runs the same command until it exits 0, killing it on the way. A kill
is either
  * in-save: the process is killed the moment an orbax temporary folder
    (`*.orbax-checkpoint-tmp*`) appears under checkpoints/ or best/, i.e. while a save is in
    flight (the async write, the commit rename, or between the best and the latest save), or
  * random: at a uniform moment between the baseline's start of training (its config.json
    appears, after imports and data checks) and its exit.
Every series ends with a run that is left alone. A workdir is *stuck* when a restart that
was not killed fails. At the end of each series the final train state (every leaf of
checkpoints/<num_steps>) is compared bit for bit with the baseline, and metrics.jsonl must
hold each logged step once.

Schedule: the tiny test model (configs/test.py) on the bundled EuroSAT sample, --steps steps,
a checkpoint every 2 steps and an evaluation every 3 (not a multiple of 2: best/ and
checkpoints/ are saved at different steps, which is where kills used to leave stuck workdirs).
"""

import argparse
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / 'data' / 'eurosat_sample'


def _command(workdir, data_dir, steps):
  return [sys.executable, 'main.py', '--config=configs/test.py', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', f'--config.num_steps={steps}',
          '--config.checkpoint_every=2', '--config.eval_every=3', '--config.log_every=2',
          '--config.patience=1000']


def _env(cache):
  return {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(cache),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0.5', 'PYTHONUNBUFFERED': '1'}


def _saving(workdir: pathlib.Path) -> bool:
  for sub in ('checkpoints', 'best'):
    try:
      if any('.orbax-checkpoint-tmp' in e.name for e in os.scandir(workdir / sub)):
        return True
    except FileNotFoundError:
      pass
  return False


def _run(cmd, env, kill: str | None, delay: float, log, started=None) -> tuple[str, float]:
  """Runs `cmd`; kill=None lets it finish, 'random' kills after `delay` s, 'save' at the
  first temporary checkpoint folder. Returns (outcome, s) with outcome 'ok', 'killed',
  'failed' or 'no-save' (it finished before a save was seen). `started`, a list, receives the
  time at which the workdir's config.json appeared (the process is past its imports)."""
  workdir = pathlib.Path(cmd[3].split('=', 1)[1])
  t0 = time.perf_counter()
  p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
  while p.poll() is None:
    now = time.perf_counter() - t0
    if started is not None and not started and (workdir / 'config.json').exists():
      started.append(now)
    if kill == 'random' and now >= delay or kill == 'save' and _saving(workdir):
      p.send_signal(signal.SIGKILL)
      p.wait()
      return 'killed', time.perf_counter() - t0
    time.sleep(0.002 if kill == 'save' else 0.01)
  rc = p.returncode
  if rc == 0:
    return ('no-save' if kill == 'save' else 'ok'), time.perf_counter() - t0
  return 'failed', time.perf_counter() - t0


def _leaves(workdir: pathlib.Path, step: int):
  import jax  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  path = (workdir / 'checkpoints' / str(step) / 'state').absolute()
  return jax.tree_util.tree_leaves(ocp.StandardCheckpointer().restore(path))


def _compare(ref: pathlib.Path, got: pathlib.Path, step: int) -> tuple[int, int]:
  import numpy as np  # pylint: disable=g-import-not-at-top
  a, b = _leaves(ref, step), _leaves(got, step)
  if len(a) != len(b):
    return 0, len(a)
  return sum(bool(np.array_equal(x, y)) for x, y in zip(a, b)), len(a)


def _logged_once(workdir: pathlib.Path) -> bool:
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines() if l]
  keys = [(r['step'], tuple(sorted(k for k in r if k != 'step'))) for r in rows]
  return len(keys) == len(set(keys))


def main():
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--kills', type=int, default=30, help='total kills (half in-save)')
  ap.add_argument('--kills_per_series', type=int, default=6)
  ap.add_argument('--steps', type=int, default=12)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--keep', action='store_true', help='keep the temporary folder')
  args = ap.parse_args()
  rng = random.Random(args.seed)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix='stssl_soak_'))
  log = open(tmp / 'log.txt', 'w')
  env = _env(tmp / 'jax_cache')
  data = tmp / 'data'
  subprocess.run([sys.executable, '-m', 'data_prep.eurosat', '--images', str(SAMPLE / '2750'),
                  '--coords', str(SAMPLE / 'coords.csv'), '--out', str(data)], cwd=REPO,
                 check=True, stdout=log, stderr=log)

  ref = tmp / 'reference'
  _run(_command(ref, data, args.steps), env, None, 0, log)  # Fills the compilation cache.
  shutil.rmtree(ref)
  started = []
  outcome, t_ref = _run(_command(ref, data, args.steps), env, None, 0, log, started)
  assert outcome == 'ok', f'the baseline run failed; see {tmp / "log.txt"}'

  plan = ['save', 'random'] * (args.kills // 2) + ['random'] * (args.kills % 2)
  rng.shuffle(plan)
  rows, stuck, t_series = [], 0, 0.0
  while plan:
    series = len(rows)
    workdir = tmp / f'series_{series}'
    cmd = _command(workdir, data, args.steps)
    kinds = {'save': 0, 'random': 0}
    failures, wall = 0, 0.0
    while plan and sum(kinds.values()) < args.kills_per_series:
      kind = plan[-1]
      outcome, s = _run(cmd, env, kind, rng.uniform(started[0], t_ref) if kind == 'random' else t_ref,
                        log)
      wall += s
      if outcome == 'killed':
        kinds[plan.pop()] += 1
      elif outcome == 'failed':
        failures += 1
        break
      elif kind == 'random':  # It finished first (a fast start): draw this kill again.
        break
      else:  # It finished before the kill: start the next series with this kill still due.
        break
    while failures == 0:  # Resume to the end, undisturbed.
      outcome, s = _run(cmd, env, None, 0, log)
      wall += s
      if outcome == 'ok':
        break
      failures += 1
    stuck += failures > 0
    t_series += wall
    equal, total = _compare(ref, workdir, args.steps) if failures == 0 else (0, 0)
    rows.append((series, kinds['save'], kinds['random'], 'yes' if failures else 'no',
                 f'{equal}/{total}', 'yes' if failures == 0 and _logged_once(workdir) else 'no',
                 wall))
    if failures:
      print(f'series {series}: stuck; its log is in {tmp / "log.txt"}', file=sys.stderr)

  print(f'Kill soak: {args.steps} steps of configs/test.py (checkpoint every 2, eval every 3), '
        f'seed {args.seed}')
  print(f'{"series":>6} {"in-save":>7} {"random":>6} {"stuck":>5} {"leaves equal":>13} '
        f'{"logs once":>9} {"wall s":>7}')
  for r in rows:
    print(f'{r[0]:>6} {r[1]:>7} {r[2]:>6} {r[3]:>5} {r[4]:>13} {r[5]:>9} {r[6]:>7.1f}')
  kills_save = sum(r[1] for r in rows)
  kills_random = sum(r[2] for r in rows)
  eq = sum(int(r[4].split('/')[0]) for r in rows)
  tot = sum(int(r[4].split('/')[1]) for r in rows)
  print(f'kills: {kills_save + kills_random} ({kills_save} while a save was in flight, '
        f'{kills_random} at random moments); stuck workdirs: {stuck}/{len(rows)}; '
        f'leaves equal to the uninterrupted run: {eq}/{tot}')
  print(f'baseline (uninterrupted) {t_ref:.1f} s per run; killed series '
        f'{t_series / max(len(rows), 1):.1f} s each on average: '
        f'{t_series / max(len(rows), 1) / t_ref:.2f}x the baseline')
  log.close()
  if not args.keep:
    shutil.rmtree(tmp, ignore_errors=True)
  else:
    print(f'kept {tmp}')
  return 1 if stuck or eq != tot else 0


if __name__ == '__main__':
  sys.exit(main())
