"""The run report's figures: one function per PNG, each depending on its arguments only.

Figures are built with `matplotlib.figure.Figure` and the Agg canvas directly, never pyplot:
no global figure state, no display needed, safe in a training process.
"""

import math
import textwrap
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

Series = Mapping[str, tuple[np.ndarray, np.ndarray]]  # key -> (steps [T], values [T]).

DPI = 110
# Above this many samples the map bins them (see `sample_map`).
MAP_MAX_POINTS = 1000  # Beyond this, overlapping markers hide each other: hex cells.
# One colour per model branch (and per pseudo-label source) in every figure.
COLORS = {'student': 'C0', 'image_only': 'C0', 'plain': 'C2', 'teacher': 'C1'}
_BRANCH_LABELS = {'image_only': 'image-only model', 'student': 'student (image only)',
                  'teacher': 'teacher (image + metadata)', 'plain': 'model (image only)'}


def branch_label(name: str) -> str:
  """Legend text of a branch or pseudo-label source name."""
  return _BRANCH_LABELS.get(name, name.replace('_', ' '))


def pl_source_label(source: str, stssl: bool) -> str:
  """Legend text of a pseudo-label source. With a teacher (STSSL), 'image_only' is the
  student's own proposal, which trains nothing; without one it is what the model trains on."""
  labels = ({'teacher': 'teacher, image + metadata (trained on)',
             'image_only': 'student, image only (not used)'} if stssl else
            {'image_only': 'image-only model (trained on)'})
  return labels.get(source, branch_label(source))


def short_name(name: str, width: int = 34, lines: int = 2) -> str:
  """A class name wrapped to `lines` lines of `width` characters, cut with '...' if longer.

  BigEarthNet's CORINE names run to 90 characters; left as is they squeeze the plot.
  """
  wrapped = textwrap.wrap(name, width) or ['']
  if len(wrapped) > lines:
    wrapped = wrapped[:lines]
    wrapped[-1] = wrapped[-1][:width - 3] + '...'
  return '\n'.join(wrapped)


def _new(figsize) -> Figure:
  fig = Figure(figsize=figsize, dpi=DPI, layout='constrained')
  FigureCanvasAgg(fig)
  return fig


def _save(fig: Figure, path: str) -> str:
  fig.savefig(path, dpi=DPI)
  return path


def curves(panels: Sequence[dict], path: str, title: str, best_step: Optional[int] = None,
           ncols: int = 2) -> str:
  """Line plots over training steps, one panel per dict.

  Args:
    panels: dicts with 'title', 'ylabel', 'lines' (a list of (label, steps [T], values [T],
      colour or None, line style)) and optionally 'unit_range' (fix y to [0, 1]),
      'mark_best' (draw `best_step` as a dotted vertical line) and 'legend' (default True:
      drawn when there is more than one line).
    path: output PNG.
    title: figure title.
    best_step: the selected checkpoint's step, or None.
    ncols: panels per row.

  Returns:
    path.
  """
  ncols = min(ncols, len(panels))
  nrows = math.ceil(len(panels) / ncols)
  fig = _new((5.2 * ncols, 3.3 * nrows + 0.4))
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
  # One step range for every panel: a curve with undefined (NaN) early points must not get
  # an axis of its own that looks like the others.
  all_steps = [s for p in panels for _, steps, *_ in p['lines'] for s in steps]
  span = (min(all_steps), max(all_steps)) if all_steps else None
  for ax, panel in zip(axes, panels):
    for label, steps, values, color, style in panel['lines']:
      # Markers keep short or sparse curves (a few evaluations) readable.
      ax.plot(steps, values, style, label=label, color=color,
              marker='o' if len(steps) <= 25 else None, markersize=3.5, linewidth=1.4)
    if panel.get('mark_best') and best_step is not None:
      ax.axvline(best_step, color='0.4', linestyle=':', linewidth=1.2,
                 label=f'best checkpoint (step {best_step})')
    if panel.get('unit_range'):
      ax.set_ylim(-0.03, 1.03)
    ax.set_title(panel['title'], fontsize=10.5)
    if span and span[1] > span[0]:
      pad = 0.03 * (span[1] - span[0])
      ax.set_xlim(span[0] - pad, span[1] + pad)
    ax.set_xlabel('training step')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(panel['ylabel'])
    ax.grid(alpha=0.3)
    ax.ticklabel_format(axis='y', style='sci', scilimits=(-3, 4))
    if panel.get('legend', True) and (len(panel['lines']) > 1 or panel.get('mark_best')):
      ax.legend(fontsize=8, framealpha=0.85)
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  fig.suptitle(title, fontsize=12.5)
  return _save(fig, path)


def confusion(matrix: np.ndarray, class_names: Sequence[str], path: str, title: str) -> str:
  """Row-normalised confusion matrix [C, C] (rows: true class) as an annotated heat map."""
  matrix = np.asarray(matrix, np.float64)
  c = matrix.shape[0]
  side = max(5.0, 0.55 * c + 2.5)
  fig = _new((side + 1.0, side))
  ax = fig.subplots()
  image = ax.imshow(matrix, cmap='Blues', vmin=0.0, vmax=1.0)
  fig.colorbar(image, ax=ax, shrink=0.8, label='fraction of the true class')
  ticks = np.arange(c)
  names = [short_name(n, 28, 1) for n in class_names]
  ax.set_xticks(ticks, labels=names, rotation=45, ha='right', rotation_mode='anchor')
  ax.set_yticks(ticks, labels=names)
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  if c <= 25:  # Beyond that, numbers no longer fit in the cells.
    for i in range(c):
      for j in range(c):
        v = matrix[i, j]
        if v > 0:
          ax.text(j, i, f'{v:.2f}'.lstrip('0') if v < 1 else '1', ha='center', va='center',
                  fontsize=7.5, color='white' if v > 0.55 else 'black')
  ax.set_title(title, fontsize=11)
  return _save(fig, path)


def per_class_ap(ap: Mapping[str, np.ndarray], class_names: Sequence[str], path: str,
                 title: str) -> str:
  """Horizontal bars of per-class AP, one bar per branch within each class.

  Args:
    ap: branch -> [C] average precision.
    class_names: C names.
    path: output PNG.
    title: figure title.

  Returns:
    path.
  """
  c, branches = len(class_names), list(ap)
  fig = _new((9.5, 0.3 * c * max(1, len(branches)) ** 0.5 + 1.8))
  ax = fig.subplots()
  height = 0.8 / len(branches)
  y = np.arange(c)
  for i, branch in enumerate(branches):
    mean = float(np.mean(ap[branch]))
    ax.barh(y - 0.4 + height * (i + 0.5), ap[branch], height=height,
            color=COLORS.get(branch), label=f'{branch_label(branch)} (mean {mean:.3f})')
  ax.set_yticks(y, labels=[short_name(n) for n in class_names], fontsize=8)
  ax.set_ylim(c - 0.5, -0.5)  # Class 0 on top, as in the class list.
  ax.set_xlim(0, 1)
  ax.set_xlabel('average precision')
  ax.grid(axis='x', alpha=0.3)
  # Below the axes: inside, it would hide the bars of some class whatever its corner.
  fig.legend(loc='outside lower center', ncol=len(branches), fontsize=8.5)
  ax.set_title(title, fontsize=11)
  return _save(fig, path)


def _extent(lat: np.ndarray, lon: np.ndarray) -> tuple[float, float, float, float]:
  """(lon_min, lon_max, lat_min, lat_max) padded by 5% and at least 1 degree."""
  pad_lon = max(1.0, 0.05 * float(np.ptp(lon)))
  pad_lat = max(1.0, 0.05 * float(np.ptp(lat)))
  return (max(-180.0, lon.min() - pad_lon), min(180.0, lon.max() + pad_lon),
          max(-90.0, lat.min() - pad_lat), min(90.0, lat.max() + pad_lat))


def sample_map(points: Mapping[str, dict], path: str, title: str,
               max_points: int = MAP_MAX_POINTS, ncols: Optional[int] = None) -> str:
  """Evaluation samples at their (lon, lat), one panel per entry, equal aspect, one extent.

  Args:
    points: panel key -> {'lat' [N], 'lon' [N], and either 'correct' [N] bool (single-label:
      green dots / red crosses) or 'score' [N] in [0, 1] (multi-label: per-sample F1, coloured
      by a colour map); optionally 'label' (panel title; default the branch label of the key)}.
    path: output PNG.
    title: figure title.
    max_points: above this many samples, hexagonal cells coloured by their mean score
      replace the individual markers.
    ncols: panels per row (default: all in one row).

  Returns:
    path.
  """
  branches = list(points)
  ncols = min(ncols or len(branches), len(branches))
  nrows = math.ceil(len(branches) / ncols)
  # One extent for every panel, so that held-out regions show where they lie.
  x0, x1, y0, y1 = _extent(np.concatenate([np.asarray(p['lat']) for p in points.values()]),
                           np.concatenate([np.asarray(p['lon']) for p in points.values()]))
  aspect = (y1 - y0) / (x1 - x0)
  width = 5.8 if ncols > 1 else 7.5
  fig = _new((width * ncols, nrows * (min(9.0, max(3.5, width * aspect)) + 0.4) + 0.5))
  axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False).ravel())
  for ax in axes[len(branches):]:
    ax.set_visible(False)
  for ax, branch in zip(axes, branches):
    p = points[branch]
    lat, lon = np.asarray(p['lat']), np.asarray(p['lon'])
    score = np.asarray(p['correct'] if 'correct' in p else p['score'], np.float64)
    what = 'accuracy' if 'correct' in p else 'mean per-sample F1'
    if len(lat) > max_points:
      # Overlapping markers would show whichever colour is drawn last: average per cell.
      cells = ax.hexbin(lon, lat, C=score, reduce_C_function=np.mean, gridsize=45,
                        cmap='RdYlGn', vmin=0.0, vmax=1.0, mincnt=1,
                        extent=(x0, x1, y0, y1))
      fig.colorbar(cells, ax=ax, shrink=0.8, label=f'{what} per cell')
    elif 'correct' in p:
      ok = score > 0.5
      ax.scatter(lon[ok], lat[ok], s=16, c='tab:green', marker='o', alpha=0.75,
                 label=f'correct ({ok.sum()}, {ok.mean():.0%})')
      ax.scatter(lon[~ok], lat[~ok], s=22, c='tab:red', marker='x', alpha=0.85,
                 label=f'wrong ({(~ok).sum()})')
      ax.legend(fontsize=8, loc='best', framealpha=0.85)
    else:
      sc = ax.scatter(lon, lat, s=16, c=score, cmap='RdYlGn', vmin=0.0, vmax=1.0)
      fig.colorbar(sc, ax=ax, shrink=0.8, label='per-sample F1')
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect('equal')
    ax.set_xlabel('longitude (degrees east)')
    ax.set_ylabel('latitude (degrees north)')
    ax.grid(alpha=0.3)
    ax.set_title(f'{p.get("label", branch_label(branch))}\n{len(lat)} samples, {what} '
                 f'{score.mean():.3f}', fontsize=9.5)
  fig.suptitle(title, fontsize=12)
  return _save(fig, path)


def group_bars(groups: Sequence[str], values: Mapping[str, np.ndarray], counts: Sequence[int],
               path: str, title: str, ylabel: str) -> str:
  """Grouped vertical bars: one group per country/season, one bar per branch.

  Args:
    groups: G group names.
    values: branch -> [G] metric values.
    counts: [G] samples per group (written under the group name).
    path: output PNG.
    title: figure title.
    ylabel: the metric.

  Returns:
    path.
  """
  branches = list(values)
  n_bars = len(groups) * max(1, len(branches))
  per_bar = min(0.75, 14.0 / n_bars)  # Inches; at most 16 inches in all (23 EuroSAT countries).
  fig = _new((max(6.0, per_bar * n_bars + 2.0), 4.6))
  ax = fig.subplots()
  width = 0.8 / len(branches)
  x = np.arange(len(groups))
  narrow = per_bar < 0.35
  for i, branch in enumerate(branches):
    bars = ax.bar(x - 0.4 + width * (i + 0.5), values[branch], width=width,
                  color=COLORS.get(branch), label=branch_label(branch))
    ax.bar_label(bars, fmt='%.2f', fontsize=6.5 if narrow else 7.5, padding=1.5,
                 rotation=90 if narrow else 0)
  ax.set_xticks(x, labels=[f'{g}\n(n={n})'.replace(' (', '\n(') for g, n in zip(groups, counts)],
                fontsize=7.5 if narrow else 8.5)
  ax.set_ylim(0, 1.08)
  ax.set_ylabel(ylabel)
  ax.grid(axis='y', alpha=0.3)
  fig.legend(loc='outside lower center', ncol=len(branches), fontsize=8.5)
  ax.set_title(title, fontsize=11)
  return _save(fig, path)


def model_bars(rows: Sequence[dict], key: str, path: str, title: str) -> str:
  """Grouped bars of rows[key], each labelled with its value: one group per 'model', one bar
  (and legend entry) per 'split'. Scores in [0, 1] get a [0, 1] axis, so charts compare.

  Args:
    rows: dicts with 'split', 'model' and key (a missing combination leaves a gap).
    path: output PNG.
    title: figure title.

  Returns:
    path.
  """
  splits = list(dict.fromkeys(r['split'] for r in rows))
  models = list(dict.fromkeys(r['model'] for r in rows))
  width = min(0.8 / len(splits), 0.3)
  fig = _new((max(6.5, 0.55 * len(models) * len(splits) + 3.0), 5.2))
  ax = fig.subplots()
  for i, split in enumerate(splits):
    vals = [next((float(r[key]) for r in rows if r['split'] == split and r['model'] == m),
                 np.nan) for m in models]
    bars = ax.bar(np.arange(len(models)) + i * width, vals, width, label=split)
    ax.bar_label(bars, fmt='%.3f', fontsize=7, padding=1)
  ax.set_xticks(np.arange(len(models)) + width * (len(splits) - 1) / 2)
  ax.set_xticklabels([short_name(m, 28) for m in models], rotation=25, ha='right', fontsize=8)
  values = np.array([float(r[key]) for r in rows], np.float64)
  if np.all((values >= 0) & (values <= 1)):
    ax.set_ylim(0, 1.08)
  ax.set_ylabel(PRETTY.get(key, key))
  ax.grid(axis='y', alpha=0.3)
  ax.set_title(title, fontsize=11)
  ax.legend(title='split', fontsize=8, loc='best')
  return _save(fig, path)


# ----- Which curves go in which figure (names follow train.py's metrics.jsonl keys). -----

PRETTY = {'top1': 'top-1 accuracy', 'balanced_acc': 'balanced accuracy',
          'macro_precision': 'macro precision', 'macro_recall': 'macro recall',
          'macro_f1': 'macro F1', 'micro_f1': 'micro F1', 'macro_map': 'macro mAP',
          'micro_map': 'micro mAP', 'macro_f1_prob05': 'macro F1 (prob > 0.5)',
          'micro_f1_prob05': 'micro F1 (prob > 0.5)', 'loss': 'mean loss (CE / BCE)',
          'accuracy': 'accuracy', 'precision': 'precision', 'recall': 'recall',
          'sample_f1': 'sample F1'}
EVAL_ORDER = ('top1', 'macro_map', 'balanced_acc', 'micro_map', 'macro_f1', 'micro_f1',
              'macro_precision', 'macro_recall', 'macro_f1_prob05', 'micro_f1_prob05', 'loss')


def metric_order(metric: str) -> tuple[int, str]:
  """Sort key: the reported metrics in `EVAL_ORDER`, then any other alphabetically."""
  return (EVAL_ORDER.index(metric) if metric in EVAL_ORDER else len(EVAL_ORDER), metric)


# Loss terms keep their colour across the teacher, student and plain panels.
_TERM_COLORS = {'sup_loss': 'C0', 'unsup_loss': 'C1', 'distill_loss': 'C2', 'anti_loss': 'C4',
                'ent_loss': 'C5'}
_OPTIM = {'train/lr': ('learning rate', 'lr'), 'train/grad_norm': ('gradient norm', 'norm'),
          'train/steps_per_sec': ('throughput (evaluation and compilation included)',
                                  'steps / s')}


def _line(series, key, label, color=None, style='-'):
  return (label, *series[key], color, style)


def _loss_panels(series, keys) -> list[dict]:
  groups: dict[str, list[str]] = {}
  for k in keys:  # train/loss | train/<net>/<term> | train/<term>
    parts = k.split('/')
    group = 'total' if k == 'train/loss' else parts[1] if len(parts) > 2 else 'loss terms'
    groups.setdefault(group, []).append(k)
  order = {'total': 0, 'teacher': 1, 'student': 2}
  panels = []
  for group in sorted(groups, key=lambda g: (order.get(g, 3), g)):
    lines, total = [], []
    for k in groups[group]:
      term = k.split('/')[-1]
      if term == 'loss':  # The sum: black, dashed and drawn last, so a term equal to it shows.
        total.append(_line(series, k, 'sum', 'black', '-' if group == 'total' else '--'))
      else:
        label = term.replace('_', ' ') + (' (x lambda_d in the sum)' if term == 'distill_loss'
                                          else '')
        lines.append(_line(series, k, label, _TERM_COLORS.get(term)))
    lines += total
    title = ('total loss (minimised)' if group == 'total' else
             f'{branch_label(group)} losses' if group in order else group)
    panels.append({'title': title, 'ylabel': 'loss', 'lines': lines})
  return panels


_PL_TITLES = {'recall': 'recall: share accepted by the mask',
              'accuracy': 'accuracy of the accepted ones',
              'precision': 'precision (macro over proposed classes)',
              'accuracy_all': 'accuracy of all, mask ignored'}


def _pseudo_label_panels(series, train) -> tuple[list[dict], set[str]]:
  """Mask ratio, then one panel per `train/pl/<source>/<metric>`, one line per source."""
  panels = []
  by_metric: dict[str, list[str]] = {}
  for k in train:
    parts = k.split('/')
    if len(parts) == 4 and parts[1] == 'pl':
      by_metric.setdefault(parts[3], []).append(k)
  masks = [k for k in train if 'mask_ratio' in k]
  if masks and 'recall' not in by_metric:  # The recall panel shows the same curve.
    panels.append({'title': 'mask ratio: share of pseudo-labels above the threshold',
                   'ylabel': 'fraction', 'unit_range': True,
                   'lines': [_line(series, k, k[6:].replace('_', ' ')) for k in masks]})
  order = list(_PL_TITLES)
  stssl = any(k.split('/')[2] == 'teacher' for ks in by_metric.values() for k in ks)
  for metric in sorted(by_metric, key=lambda m: order.index(m) if m in order else len(order)):
    keys = by_metric[metric]
    sources = [k.split('/')[2] for k in keys]
    panels.append({'title': 'pseudo-label ' + _PL_TITLES.get(metric, metric),
                   'ylabel': metric.replace('_', ' '), 'unit_range': True,
                   'lines': [_line(series, k, pl_source_label(src, stssl), COLORS.get(src))
                             for k, src in zip(keys, sources)]})
  used = set(masks) | {k for ks in by_metric.values() for k in ks}
  return panels, used | {k for k in train if k.startswith('train/pl_class/')}


def training_figures(series: Series) -> list[tuple[str, str, str, list[dict]]]:
  """(file, title, caption, panels for `curves`) of each training figure that has data."""
  train = sorted(k for k in series if k.startswith('train/'))
  figures = []
  losses = [k for k in train if 'loss' in k.split('/')[-1] and not k.endswith('_computed')
            and not k.startswith('train/pl/')]
  if losses:
    figures.append(('losses.png', 'Training losses', 'Means over each logging interval. Terms are '
                    'drawn unweighted; each sum weights them (lambda_u, lambda_d), so a large '
                    'distillation term can sit above a small sum. STSSL minimises the teacher '
                    'sum plus the student sum.',
                    _loss_panels(series, losses)))
  panels, used = _pseudo_label_panels(series, train)
  if panels:
    figures.append(('pseudo_labels.png', 'Pseudo-labels on the unlabeled batches',
                    'Quality is measured against the true labels of the unlabeled samples, '
                    'which training uses for nothing else, pooled over each logging interval '
                    '(gaps: nothing accepted). For STSSL the teacher line is the pseudo-labels '
                    'the step used; the student line is what the student alone would have '
                    'proposed on the same weak views under the same rule. Multi-label values '
                    'are macro means over classes.', panels))
  optim = [k for k in _OPTIM if k in series]
  if optim:
    figures.append(('optimization.png', 'Optimisation', 'Learning-rate schedule, gradient norm '
                    'before the update, and throughput.', [
                        {'title': _OPTIM[k][0], 'ylabel': _OPTIM[k][1],
                         'lines': [_line(series, k, k)]} for k in optim]))
  other = [k for k in train if k not in used | set(losses) | set(optim)]
  if other:
    figures.append(('algorithm_state.png', 'Other training scalars',
                    'Algorithm-specific statistics (thresholds, adaptive weights...).',
                    [{'title': k[6:], 'ylabel': 'value', 'lines': [_line(series, k, k)]}
                     for k in other]))
  return figures


def eval_panels(series: Series, branches: Sequence[str], selection: str) -> list[dict]:
  """Panels for `curves`: one per evaluation metric, one line per branch.

  `selection` (top1 or macro_map) gets the best-checkpoint marker; only the first panel has a
  legend, since the branches and colours are the same in all of them.
  """
  metrics = sorted({k.split('/', 1)[1] for k in series if k.split('/')[0] in branches},
                   key=metric_order)
  metrics.sort(key=lambda m: m != selection)  # The selection metric first, with the legend.
  return [{'title': PRETTY.get(m, m), 'ylabel': 'loss' if m == 'loss' else 'score',
           'mark_best': m == selection, 'unit_range': m != 'loss', 'legend': i == 0,
           'lines': [_line(series, f'{b}/{m}', branch_label(b), COLORS.get(b))
                     for b in branches if f'{b}/{m}' in series]}
          for i, m in enumerate(metrics)]
