"""train_and_evaluate: build, resume, loop, evaluate, checkpoint. Reads top to bottom.

Resume order (written out once, here): an existing checkpoint in the workdir, else
`config.model.init_from`, else a fresh initialisation.
"""

import json
import math
import os
import time

from absl import logging
from clu import metric_writers, periodic_actions
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from stssl_jax import algorithms, atomic, checkpoint, evaluate, faults, optim, pl_quality
from stssl_jax import steps, workdir as workdir_lib
from stssl_jax.data import pipeline
from stssl_jax.models import convert, posemb, stssl as models
from stssl_jax.train_state import TrainState


# Sizes that must be positive: (config field, description).
_POSITIVE = (('batch_size', 'labeled batch'), ('uratio', 'unlabeled / labeled ratio'),
             ('eval_batch_size', 'eval batch'), ('num_steps', 'total steps'),
             ('log_every', 'steps between logs'), ('eval_every', 'steps between evaluations'),
             ('checkpoint_every', 'steps between checkpoints'),
             ('keep_checkpoints', 'checkpoints kept'), ('data.image_size', 'image side'),
             ('data.num_channels', 'bands'), ('patience', 'early-stopping patience'))


def check_sizes(config):
  """Rejects sizes that cannot work, before anything is read or any folder is made."""
  for field, what in _POSITIVE:
    node = config
    for part in field.split('.'):
      node = node[part]
    if not isinstance(node, int) or isinstance(node, bool) or node < 1:
      raise ValueError(f'config.{field}={node!r}: the {what} must be an integer >= 1')


def _check_config(config, info, n_dev):
  if config.model.num_classes != info['num_classes']:
    raise ValueError(f'config.model.num_classes={config.model.num_classes} but dataset '
                     f'{config.data.name!r} has {info["num_classes"]} classes')
  b_u = config.batch_size * config.uratio
  for name, size in (('batch_size', config.batch_size), ('batch_size * uratio', b_u),
                     ('eval_batch_size', config.eval_batch_size)):
    if size % n_dev:
      raise ValueError(f'config.{name}={size} must be divisible by the {n_dev} devices')
  if config.pseudo_label_source not in ('online', 'ema'):
    raise ValueError(f'config.pseudo_label_source must be online or ema, got '
                     f'{config.pseudo_label_source!r}')


def _lb_prevalence(config, info):
  """[C] class prevalence of the labeled subset (multi-label data), else None."""
  key = 'lb_prevalence19' if config.data.get('label_set') == 'label19' else 'lb_prevalence'
  table = info.get(key) or {}
  frac = config.data.get('label_fraction', 0.0)
  if frac in table:
    return np.asarray(table[frac], np.float32)
  counts = (info.get('class_counts19' if key.endswith('19') else 'class_counts') or {})
  if config.multilabel and not frac and config.data.train_split in counts:
    # All of train is labeled: its prevalence is the labeled prevalence.
    return (np.asarray(counts[config.data.train_split], np.float32) /
            info['splits'][config.data.train_split])
  return None


def state_from_params(config, params, algo=None, rng=None, mesh=None, lb_prevalence=None,
                      abstract=False):
  """A step-0 TrainState around given params (e.g. converted or pretrained weights).

  The EMA starts as a copy of `params`, the AdamW state fresh, the algorithm state from
  `config`; `rng` (default PRNGKey(config.seed)) is the base key of the per-step keys.

  Args:
    config: run config.
    params: param pytree of `models.build_model(config)`, arrays (or ShapeDtypeStructs with
      `abstract`).
    algo: algorithms.Algorithm (default: from config.algorithm).
    rng: PRNG key.
    mesh: replicate the state over this mesh (default: leave it where `params` are).
    lb_prevalence: [C] labeled-set class prevalence (multi-label SoftMatch, UDAL, CAP).
    abstract: return ShapeDtypeStructs only (`jax.eval_shape`): what a restore needs.
  Returns:
    (TrainState, optax transformation, LR schedule).
  """
  algo = algo or algorithms.get(config.algorithm)
  rng = jax.random.PRNGKey(config.seed) if rng is None else rng
  tx, schedule = optim.make_optimizer(config, params, algo.uses_meta)
  algo_state = algo.base.init_state(config, config.model.num_classes, lb_prevalence)

  def build(params):
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=tx.init(params), algo_state=algo_state, rng=rng)
  if abstract:
    state = jax.eval_shape(build, params)
    if mesh is not None:
      repl = NamedSharding(mesh, P())
      state = checkpoint.abstract_like(state, jax.tree_util.tree_map(lambda _: repl, state))
    return state, tx, schedule
  if mesh is None:
    return jax.jit(build)(params), tx, schedule
  return jax.jit(build, out_shardings=NamedSharding(mesh, P()))(params), tx, schedule


def create_state(config, model, algo, rng, mesh, lb_prevalence=None, abstract=False):
  """Initial TrainState, replicated over the mesh, and the optimizer/schedule.

  lb_prevalence: [C] labeled-set class prevalence, for the algorithms whose state needs it
  (multi-label SoftMatch, UDAL, CAP). abstract: shapes, dtypes and shardings only (no
  random init is computed), for a restore that follows.
  """
  init_rng, state_rng = jax.random.split(rng)
  args = models.init_inputs(config, algo)
  init = lambda k: model.init(k, *args, train=False)['params']
  if abstract:
    params = jax.eval_shape(init, init_rng)
  else:
    params = jax.jit(init, out_shardings=NamedSharding(mesh, P()))(init_rng)
  return state_from_params(config, params, algo, state_rng, mesh, lb_prevalence, abstract)


def train_and_evaluate(config, workdir: str, return_state: bool = False,
                       allow_config_change: bool = False):
  """Trains `config` in `workdir` (resuming if it holds a checkpoint).

  A finished workdir (final_metrics.json for at least `config.num_steps`) is not touched: its
  final metrics are returned. A workdir started with another config stops with the changed
  fields listed, unless they are all in `workdir.RESUMABLE_CHANGES` or `allow_config_change`.

  Returns:
    dict with the final evaluation metrics ('student/top1', 'teacher/top1', ...), the best
    metric and its step; with `return_state`, also the final TrainState.
  Raises:
    FloatingPointError: the loss or params became non-finite; names the first such step and
      the newest (finite) checkpoint.
    workdir.ConfigChanged, checkpoint.RestoreMismatch, ValueError: bad config or workdir.
  """
  check_sizes(config)
  mesh = evaluate.make_mesh()
  repl, data_sh = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  algo = algorithms.get(config.algorithm)
  info = pipeline.dataset_info(config)
  _check_config(config, info, mesh.size)
  is_main = jax.process_index() == 0
  done_before = workdir_lib.finished(workdir, config)
  if done_before is not None and not return_state:
    workdir_lib.guard_config(workdir, config, int(done_before['step']), allow_config_change,
                             write=False)
    logging.info('%s is finished (step %d); nothing to do', workdir, done_before['step'])
    return done_before
  # Checked now, recorded only once the checkpoint has restored: an accepted change that the
  # checkpoint cannot take (another image size) must not overwrite the config it was made with.
  resume_step = _committed_step(workdir) or 0
  workdir_lib.guard_config(workdir, config, resume_step, allow_config_change, write=False)
  os.makedirs(workdir, exist_ok=True)
  model = models.build_model(config)
  train_iter = pipeline.train_iterator(config)
  ckpt = checkpoint.Checkpointer(workdir, keep=config.keep_checkpoints)
  progress = {'best_metric': -math.inf, 'best_step': 0, 'stopped_early': False}
  resuming = ckpt.latest_step() is not None
  # A restore overwrites every leaf: it needs only shapes, not a random initialisation.
  state, tx, schedule = create_state(config, model, algo, jax.random.PRNGKey(config.seed), mesh,
                                     _lb_prevalence(config, info), abstract=resuming)

  if resuming:
    try:
      state, progress = ckpt.restore(state, train_iter)
    except checkpoint.RestoreMismatch as e:
      ckpt.close()
      raise checkpoint.RestoreMismatch(
          f'cannot resume {workdir}: {e}. {workdir_lib.shape_fields(workdir, config)}. Use the '
          'settings the checkpoint was written with, or a new --workdir') from None
    logging.info('Resumed from %s at step %d', workdir, int(state.step))
  elif config.model.init_from:
    state = _init_from(state, config.model.init_from)
  workdir_lib.guard_config(workdir, config, resume_step, allow_config_change, write=is_main)

  step_fn = steps.make_train_step(model=model, algo=algo, config=config, tx=tx)
  state_sh = jax.tree_util.tree_map(lambda x: x.sharding, state)
  train_step = jax.jit(step_fn, in_shardings=(state_sh, data_sh),
                       out_shardings=(state_sh, repl), donate_argnums=(0,))
  eval_fn = evaluate.make_eval_fn(model, algo, config, repl)
  image_branch = algo.eval_branch

  old_events = workdir_lib.event_files(workdir)
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  if is_main:
    workdir_lib.reset_logs(workdir, int(state.step), writer, old_events)
  # No writer: its steps_per_sec/uptime rows are not in metrics.jsonl and would repeat after a
  # resume; our own steps_per_sec is logged instead.
  report = periodic_actions.ReportProgress(num_train_steps=config.num_steps)

  def halt_if_nonfinite():
    bad = int(state.first_nonfinite)  # One host sync, at points that sync anyway.
    if bad >= 0:
      ckpt.wait()  # The newest finite checkpoint is complete before it is named.
      last = ckpt.latest_step()
      where = (f'step {last} in {os.path.join(workdir, "checkpoints")}' if last is not None
               else 'none (it diverged before the first save)')
      raise FloatingPointError(
          f'training diverged: the loss or params were first non-finite after step {bad}; '
          f'nothing non-finite was saved; newest finite checkpoint: {where}. A resume replays '
          'the same steps: change the run (e.g. a lower --config.lr with '
          '--allow_config_change) to get past it')

  def run_eval(done):
    halt_if_nonfinite()
    faults.point('eval', done)
    with report.timed('eval'):
      out = evaluate.evaluate_all(state, eval_fn, config, image_branch, algo, data_sh, workdir,
                                  done)
    _log(writer, workdir, done, out)
    key = f'{image_branch}/' + ('macro_map' if config.multilabel else 'top1')
    if out[key] > progress['best_metric']:
      progress.update(best_metric=out[key], best_step=done)
      if ckpt.save_best(done, state.ema_params, dict(progress)):
        faults.point('after_best_save', done, settle=ckpt.wait)
    return out

  start = int(state.step)
  pending, t_log, final = [], time.time(), {}
  # steps/s counts the steps since the last log (fewer after a resume) over the time spent
  # training them: evaluation and checkpoint saves in between are not train time.
  last_log, t_other = start, 0.0
  try:
    for step in range(start, config.num_steps):
      if progress['stopped_early']:
        break
      local = next(train_iter)
      if faults.point('batch', step + 1) == 'nan':
        local = dict(local, lb_image=np.full_like(local['lb_image'], np.nan))
      state, m = train_step(state, evaluate.global_batch(local, data_sh))
      pending.append(m)
      done = step + 1
      report(done)

      if done % config.log_every == 0 or done == config.num_steps:
        # The only host sync of the loop outside evaluation and saving.
        avg = interval_mean(pending)
        pending = []
        halt_if_nonfinite()
        avg = {f'train/{k}': float(v) for k, v in pl_quality.summarize(avg).items()}
        avg['train/lr'] = float(schedule(done - 1))
        elapsed = time.time() - t_log - t_other
        avg['train/steps_per_sec'] = (done - last_log) / max(elapsed, 1e-9)
        t_log, t_other, last_log = time.time(), 0.0, done
        _log(writer, workdir, done, avg)
        eta = (config.num_steps - done) / max(avg['train/steps_per_sec'], 1e-9)
        logging.info('step %d/%d loss %.4f (%.2f steps/s, ETA %s)', done, config.num_steps,
                     avg['train/loss'], avg['train/steps_per_sec'], _fmt_eta(eta))

      if done % config.eval_every == 0 or done == config.num_steps:
        halt_if_nonfinite()  # Waits for the queued steps: their time stays train time.
        t0 = time.time()
        final = run_eval(done)
        t_other += time.time() - t0
        if done - progress['best_step'] >= config.patience:
          progress['stopped_early'] = True
          logging.info('Early stop at step %d (best %.4f at %d)', done,
                       progress['best_metric'], progress['best_step'])

      last = done == config.num_steps or progress['stopped_early']
      stop_now = config.max_steps_this_run > 0 and done - start >= config.max_steps_this_run
      if done % config.checkpoint_every == 0 or last or stop_now:
        halt_if_nonfinite()
        t0 = time.time()
        ckpt.save(done, state, train_iter, dict(progress))
        faults.point('after_save', done, settle=ckpt.wait)
        t_other += time.time() - t0
      if stop_now:
        break
    if not final and (int(state.step) >= config.num_steps or progress['stopped_early']):
      # Finished by an earlier process that was stopped before writing final_metrics.json:
      # the restored state evaluates to the numbers that process would have written.
      final = run_eval(int(state.step))
    ckpt.wait()
  except BaseException:
    # Let the in-flight saves finish (or remove their temporaries) before the error leaves.
    save_error = ckpt.finish_or_clean()
    if save_error is not None:
      logging.error('A checkpoint save failed as well: %s', save_error)
    raise
  ckpt.close()
  writer.flush()
  final = dict(final)
  final.update(best_metric=progress['best_metric'], best_step=progress['best_step'],
               step=int(state.step), stopped_early=bool(progress['stopped_early']))
  if is_main and (final['step'] >= config.num_steps or final['stopped_early']):
    atomic.write_text(os.path.join(workdir, 'final_metrics.json'), json.dumps(final, indent=2))
  return (final, state) if return_state else final


def _committed_step(workdir: str):
  """Newest finished step folder under WORKDIR/checkpoints (orbax renames on commit)."""
  d = os.path.join(workdir, 'checkpoints')
  steps_ = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
  return max(steps_) if steps_ else None


def _init_from(state, path):
  """Loads a pretrained ViT into every backbone; the EMA shadow starts equal to it."""
  host = jax.device_get(state.params)
  sd = convert.strip_prefix(convert.read_state_dict(path))
  backbone = host['teacher']['backbone'] if 'teacher' in host else host['backbone']
  n_target = backbone['pos_embed'].shape[1] - 1
  if 'pos_embed' in sd and sd['pos_embed'].shape[1] - 1 != n_target:
    logging.info('Resizing pos_embed %s to %d patches (bicubic, PyTorch semantics)',
                 sd['pos_embed'].shape, n_target)
    sd['pos_embed'] = posemb.resize_pos_embed(sd['pos_embed'], n_target)
  params, report = convert.load_pretrained(host, sd, return_report=True)
  logging.info('Initialised from %s:\n%s', path, report)
  shardings = jax.tree_util.tree_map(lambda x: x.sharding, state.params)
  params = jax.device_put(params, shardings)
  return state.replace(params=params, ema_params=jax.tree_util.tree_map(jnp.copy, params))


def interval_mean(pending: list[dict]) -> dict:
  """Host means over the steps of a logging interval, entry by entry (pseudo-label counts
  are per-class vectors [C] and stay vectors; `pl_quality.summarize` divides them next)."""
  return jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.mean(jnp.stack(xs), axis=0),
                                               *pending))


def _log(writer, workdir, step, scalars):
  """TensorBoard scalars, mirrored to WORKDIR/metrics.jsonl (read by the run report)."""
  writer.write_scalars(step, scalars)
  if jax.process_index() == 0:
    workdir_lib.append_metrics(workdir, step, scalars)


def _fmt_eta(seconds: float) -> str:
  seconds = int(seconds)
  return f'{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s'
