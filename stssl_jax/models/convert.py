"""PyTorch state dict <-> our params, for the original STSSL code and timm-style ViTs.

A state dict here is `{torch name: array}` (numpy arrays, or anything `np.asarray` accepts,
e.g. CPU torch tensors). Layouts (fixture README 4.3): Linear `[out, in]` -> Dense kernel
`[in, out]`; Conv2d OIHW -> Conv HWIO; the fused qkv weight is already ordered (3, heads,
head_dim) on the output axis like our `Attention.qkv`, so it is a plain transpose; LayerNorm
`weight` -> `scale`. A leading `module.` (DataParallel) prefix is stripped.

Every conversion is one table of rows (torch name, our path, layout) used in both directions, so
`to_torch_*` is the exact inverse of `from_torch_*`. Names the table does not use are either
*ignored* (known unused tensors: each STSSL backbone's aux `head.*`, METHOD 2.1 / quirk Q1, unless
the model keeps the teacher's for CDMAD; the student placeholder when the model has none; the
whole student for the teacher-only `st_supervised`) or *unknown* (an error when `strict`).
`load_pretrained` merges a timm-style ViT checkpoint (METHOD 2.2) into freshly initialised
params, reporting unknown keys and shape mismatches.
"""

import dataclasses
import os
import re
from typing import Any, Iterable, Mapping, Optional

from absl import logging
import numpy as np

Path = tuple[str, ...]
Row = tuple[str, Path, str]  # (torch name, our path, layout in {'id', 'linear', 'conv'})

_BLOCK_ROWS = (
    ('norm1.weight', ('norm1', 'scale'), 'id'), ('norm1.bias', ('norm1', 'bias'), 'id'),
    ('attn.qkv.weight', ('attn', 'qkv', 'kernel'), 'linear'),
    ('attn.qkv.bias', ('attn', 'qkv', 'bias'), 'id'),
    ('attn.proj.weight', ('attn', 'proj', 'kernel'), 'linear'),
    ('attn.proj.bias', ('attn', 'proj', 'bias'), 'id'),
    ('norm2.weight', ('norm2', 'scale'), 'id'), ('norm2.bias', ('norm2', 'bias'), 'id'),
    ('mlp.fc1.weight', ('mlp', 'fc1', 'kernel'), 'linear'),
    ('mlp.fc1.bias', ('mlp', 'fc1', 'bias'), 'id'),
    ('mlp.fc2.weight', ('mlp', 'fc2', 'kernel'), 'linear'),
    ('mlp.fc2.bias', ('mlp', 'fc2', 'bias'), 'id'),
)


@dataclasses.dataclass
class ConversionReport:
  """What a conversion did with each name.

  Attributes:
    loaded: torch names copied into the params.
    ignored: torch names deliberately not used (aux heads, unused placeholder).
    unknown: torch names the importer does not recognise.
    missing: torch names (from_torch_*) or param paths (load_pretrained) with no value.
    mismatched: 'name: checkpoint shape vs param shape' for leaves left at their init.
  """
  loaded: list = dataclasses.field(default_factory=list)
  ignored: list = dataclasses.field(default_factory=list)
  unknown: list = dataclasses.field(default_factory=list)
  missing: list = dataclasses.field(default_factory=list)
  mismatched: list = dataclasses.field(default_factory=list)

  def __str__(self):
    lines = [f'loaded {len(self.loaded)} tensors']
    for field in ('ignored', 'unknown', 'missing', 'mismatched'):
      if getattr(self, field):
        lines.append(f'{field} ({len(getattr(self, field))}): ' + ', '.join(getattr(self, field)))
    return '\n'.join(lines)


def strip_prefix(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Returns `state` as numpy arrays with a leading `module.` removed from every name."""
  return {k[len('module.'):] if k.startswith('module.') else k: np.asarray(v)
          for k, v in state.items()}


def _backbone_rows(depth: int, prefix: str, path: Path) -> list[Row]:
  rows = [(prefix + 'cls_token', path + ('cls',), 'id'),
          (prefix + 'pos_embed', path + ('pos_embed',), 'id'),
          (prefix + 'patch_embed.proj.weight', path + ('patch_embed', 'kernel'), 'conv'),
          (prefix + 'patch_embed.proj.bias', path + ('patch_embed', 'bias'), 'id')]
  for i in range(depth):
    rows += [(f'{prefix}blocks.{i}.{name}', path + (f'block_{i}',) + sub, layout)
             for name, sub, layout in _BLOCK_ROWS]
  rows += [(prefix + 'norm.weight', path + ('norm', 'scale'), 'id'),
           (prefix + 'norm.bias', path + ('norm', 'bias'), 'id')]
  return rows


def _dense_rows(prefix: str, path: Path) -> list[Row]:
  return [(prefix + 'weight', path + ('kernel',), 'linear'),
          (prefix + 'bias', path + ('bias',), 'id')]


def _vit_rows(depth: int) -> list[Row]:
  return _backbone_rows(depth, '', ('backbone',)) + _dense_rows('head.', ('head',))


def _stssl_rows(depth: int, placeholder: bool, aux_head: bool = False,
                student: bool = True) -> list[Row]:
  rows = _backbone_rows(depth, 'joint_backbone.', ('teacher', 'backbone'))
  rows += [('joint_backbone.metainfo_pos_embed', ('teacher', 'meta_token'), 'id')]
  rows += _dense_rows('metainfo_enc.fc1.', ('teacher', 'meta_encoder', 'fc1'))
  rows += _dense_rows('metainfo_enc.fc2.', ('teacher', 'meta_encoder', 'fc2'))
  rows += _dense_rows('joint_head.', ('teacher', 'head'))
  if aux_head:
    rows += _dense_rows('joint_backbone.head.', ('teacher', 'aux_head'))
  if not student:
    return rows
  rows += _backbone_rows(depth, 'student_backbone.', ('student', 'backbone'))
  if placeholder:
    rows += [('student_backbone.metainfo_pos_embed', ('student', 'placeholder'), 'id')]
  rows += _dense_rows('student_head.', ('student', 'head'))
  return rows


def _to_ours(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == 'linear':
    return x.T
  if layout == 'conv':
    return x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return x


def _to_torch(x: np.ndarray, layout: str) -> np.ndarray:
  if layout == 'linear':
    return x.T
  if layout == 'conv':
    return x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return x


def _depth(names: Iterable[str], prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r'blocks\.(\d+)\.')
  indices = [int(m.group(1)) for m in map(pattern.match, names) if m]
  return max(indices) + 1 if indices else 0


def _set(tree: dict, path: Path, value: Any):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: Path) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _import(state: Mapping[str, Any], rows: list[Row], ignore: str, strict: bool,
            dtype: Optional[Any]) -> tuple[dict, ConversionReport]:
  """Applies `rows` to `state`; names matching the regex `ignore` are reported as ignored."""
  state = strip_prefix(state)
  report, params = ConversionReport(), {}
  for name, path, layout in rows:
    if name not in state:
      report.missing.append(name)
      continue
    value = _to_ours(state[name], layout)
    _set(params, path, np.ascontiguousarray(value if dtype is None else value.astype(dtype)))
    report.loaded.append(name)
  used = {name for name, _, _ in rows}
  for name in state:
    if name not in used:
      (report.ignored if ignore and re.fullmatch(ignore, name) else report.unknown).append(name)
  if report.ignored:
    logging.info('Ignored unused torch tensors: %s', ', '.join(report.ignored))
  if strict and (report.unknown or report.missing):
    raise ValueError(f'State dict does not match the model:\n{report}')
  return params, report


def from_torch_vit(state: Mapping[str, Any], *, strict: bool = True, dtype: Optional[Any] = None,
                   return_report: bool = False):
  """Converts a plain ViT state dict (`vit.py VisionTransformer`, fixture README 4.2).

  Args:
    state: torch name -> array (`cls_token`, `pos_embed`, `patch_embed.proj.*`, `blocks.{i}.*`,
      `norm.*`, `head.*`), optionally prefixed by `module.`.
    strict: raise ValueError on unknown or missing names.
    dtype: cast every tensor to this dtype (None keeps the source dtype).
    return_report: also return the `ConversionReport`.

  Returns:
    `PlainViT` params {'backbone', 'head'} as numpy arrays (and the report if asked).
  """
  rows = _vit_rows(_depth(strip_prefix(state), ''))
  params, report = _import(state, rows, '', strict, dtype)
  return (params, report) if return_report else params


def from_torch_stssl(state: Mapping[str, Any], *, placeholder: bool = True,
                     aux_head: bool = False, student: bool = True, strict: bool = True,
                     dtype: Optional[Any] = None, return_report: bool = False):
  """Converts an `EarlyFusionArch` state dict (fixture README 4.1) to `STSSLModel` params.

  The backbones' aux `head.*` tensors are ignored (reported), as is the student's
  `metainfo_pos_embed` when `placeholder` is False (the original keeps it but never uses it).

  Args:
    state: torch name -> array, optionally prefixed by `module.`.
    placeholder: whether the target student has the placeholder token.
    aux_head: map the teacher backbone's aux head `joint_backbone.head.*` to
      ('teacher', 'aux_head') (STSSL-CDMAD's released bias, METHOD 7.5).
    student: whether the target has a student; False (`st_supervised`) ignores every
      `student_*` tensor.
    strict: raise ValueError on unknown or missing names.
    dtype: cast every tensor to this dtype (None keeps the source dtype).
    return_report: also return the `ConversionReport`.

  Returns:
    {'teacher': {'backbone', 'meta_encoder', 'meta_token', 'head', ['aux_head']},
     'student': {'backbone', ['placeholder'], 'head'}} as numpy arrays (and the report if asked).
  """
  names = strip_prefix(state)
  depth = max(_depth(names, 'joint_backbone.'), _depth(names, 'student_backbone.'))
  ignore = [r'student_backbone\.head\.(weight|bias)']
  if not aux_head:
    ignore.append(r'joint_backbone\.head\.(weight|bias)')
  if not placeholder:
    ignore.append(r'student_backbone\.metainfo_pos_embed')
  if not student:
    ignore.append(r'student_.*')
  rows = _stssl_rows(depth, placeholder, aux_head, student)
  params, report = _import(state, rows, '|'.join(ignore), strict, dtype)
  return (params, report) if return_report else params


def _export(params: Mapping, rows: list[Row]) -> dict[str, np.ndarray]:
  return {name: np.ascontiguousarray(_to_torch(np.asarray(_get(params, path)), layout))
          for name, path, layout in rows}


def _param_depth(backbone: Mapping) -> int:
  return sum(1 for k in backbone if k.startswith('block_'))


def to_torch_vit(params: Mapping) -> dict[str, np.ndarray]:
  """Inverse of `from_torch_vit`: `PlainViT` params -> torch names and layouts."""
  return _export(params, _vit_rows(_param_depth(params['backbone'])))


def to_torch_stssl(params: Mapping) -> dict[str, np.ndarray]:
  """Inverse of `from_torch_stssl` (the student's aux head is never produced: we have none)."""
  depth = _param_depth(params['teacher']['backbone'])
  student = 'student' in params
  placeholder = student and 'placeholder' in params['student']
  rows = _stssl_rows(depth, placeholder, 'aux_head' in params['teacher'], student)
  return _export(params, rows)


def _backbone_paths(tree: Mapping, path: Path = ()) -> list[Path]:
  """Paths of every 'backbone' subtree in `tree`."""
  found = []
  for key, sub in tree.items():
    if isinstance(sub, Mapping):
      found += [path + (key,)] if key == 'backbone' else _backbone_paths(sub, path + (key,))
  return found


def _flatten(tree: Mapping, path: Path = ()) -> dict[Path, Any]:
  out = {}
  for key, sub in tree.items():
    out.update(_flatten(sub, path + (key,)) if isinstance(sub, Mapping) else {path + (key,): sub})
  return out


def load_pretrained(params: Mapping, state: Mapping[str, Any], *,
                    allow_mismatch: tuple[str, ...] = ('head',), return_report: bool = False):
  """Merges a timm-style ViT checkpoint into initialised params (METHOD 2.2).

  The checkpoint's backbone goes into EVERY 'backbone' subtree (teacher and student start out
  identical); its `head.*` goes into a top-level 'head' only (PlainViT) and only when the shape
  matches (never for 1000 ImageNet classes vs C). Params the checkpoint lacks (metadata
  encoder, tokens, heads) keep their init. `pos_embed` must already have the target grid:
  resize it offline with PyTorch's bicubic kernel (METHOD 2.2 rule 2).

  Args:
    params: initialised params of `PlainViT` or `STSSLModel` (arrays with .shape / .dtype).
    state: the checkpoint's state dict (the pickle's 'model' entry), `module.` prefix allowed.
    allow_mismatch: top-level torch name parts whose shape mismatch only skips the tensor;
      any other mismatch raises.
    return_report: also return the `ConversionReport`.

  Returns:
    New params (same structure, leaves cast to the target dtypes), and the report if asked.

  Raises:
    ValueError: unknown checkpoint names or a shape mismatch outside `allow_mismatch`.
  """
  rows = _vit_rows(_depth(strip_prefix(state), ''))
  source, report = _import(state, rows, '', False, None)
  torch_shape = {k: np.shape(v) for k, v in strip_prefix(state).items()}
  targets = _flatten(params)
  merged, written, loaded = dict(targets), set(), set()
  dests = _backbone_paths(params)
  for name, path, _ in rows:
    if name not in report.loaded:
      continue
    value = _get(source, path)
    if path[0] == 'backbone':
      outs = [dest + path[1:] for dest in dests]
    elif path in targets:
      outs = [path]
    else:  # STSSL models have no place for a top-level classifier.
      report.ignored.append(name)
      continue
    for out in outs:
      target_shape = tuple(np.shape(targets[out])) if out in targets else None
      if target_shape is None:
        report.unknown.append(f'{name} (no param {"/".join(out)})')
      elif tuple(value.shape) != target_shape:
        # Shapes in the checkpoint's own (torch) layout, then ours, so both are recognisable.
        what = (f'{name}: checkpoint shape {tuple(torch_shape[name])} '
                f'(as {tuple(value.shape)}) vs param shape {target_shape} at {"/".join(out)}')
        if name.split('.')[0] not in allow_mismatch:
          raise ValueError(what)
        report.mismatched.append(what)
      else:
        merged[out] = np.asarray(value, dtype=targets[out].dtype)
        written.add(out)
        loaded.add(name)
  report.loaded = sorted(loaded)
  report.missing = ['/'.join(path) for path in targets
                    if any(path[:len(d)] == d for d in dests) and path not in written]
  if report.unknown:
    raise ValueError(f'Checkpoint does not fit the model:\n{report}')
  logging.info('Pretrained checkpoint: %s', report)
  out = {}
  for path, value in merged.items():
    _set(out, path, value)
  return (out, report) if return_report else out


def read_state_dict(path: str) -> dict:
  """Reads a checkpoint file into {torch name: numpy array}; never downloads anything.

  .npz: arrays keyed by state_dict names. .safetensors: needs the `safetensors` package.
  .pth/.pt: needs torch (optional); a top-level 'model' (or 'state_dict') entry is unwrapped,
  as in the USB release files.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.model.init_from: no such file {path!r}')
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files}
  if path.endswith('.safetensors'):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'reading {path} needs the safetensors package') from e
    return load_file(path)
  if path.endswith(('.pth', '.pt')):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f'reading {path} needs torch (pip install torch); or convert it to '
                        '.npz once elsewhere') from e
    obj = torch.load(path, map_location='cpu', weights_only=True)
    for key in ('model', 'state_dict'):
      if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        obj = obj[key]
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}
  raise ValueError(f'config.model.init_from: unsupported file type {path!r} '
                   '(expected .npz, .safetensors, .pth or .pt)')
