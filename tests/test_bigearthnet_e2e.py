"""The BigEarthNet demo end to end on the 14 bundled real patches (multi-label STSSL)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from stssl_jax import report

ROOT = pathlib.Path(__file__).parent.parent
SAMPLE = ROOT / 'data' / 'bigearthnet_sample'


@pytest.fixture(scope='module')
def prepared_ben(tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'bigearthnet_sample'
  subprocess.run([sys.executable, '-m', 'data_prep.bigearthnet', '--images',
                  str(SAMPLE / 'BigEarthNet-v1.0'), '--lists', str(SAMPLE / 'splits'),
                  '--metadata', str(SAMPLE / 'metadata.csv'), '--out', str(out)],
                 check=True, cwd=ROOT, capture_output=True, timeout=600)
  return str(out)


def test_bigearthnet_demo_prints_map(prepared_ben, tmp_path):
  workdir = tmp_path / 'ben'
  out = subprocess.run([sys.executable, 'main.py', '--config=configs/bigearthnet.py:demo',
                        f'--workdir={workdir}', f'--config.data.data_dir={prepared_ben}',
                        '--config.num_steps=6', '--config.eval_every=6', '--config.log_every=3'],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'student/macro_map' in out.stdout and 'teacher/macro_map' in out.stdout
  final = json.loads((workdir / 'final_metrics.json').read_text())
  assert 0 < final['student/macro_map'] <= 1 and np.isfinite(final['student/loss'])
  ev = json.loads((workdir / 'eval' / 'step_6.json').read_text())
  assert len(ev['student']['per_class_ap']) == 43
  preds = np.load(workdir / 'eval' / 'predictions_student.npz')
  assert preds['logits'].shape == (3, 43) and preds['label'].shape == (3, 43)
  # Validation patches are in Europe (lat/lon decoded from the metadata vector).
  assert np.all((preds['lat'] > 35) & (preds['lat'] < 70))
  # Country and season travel with each sample (for the report's per-group tables): the
  # validation patches' own, from the metadata table, in the predictions' order.
  import csv
  with open(SAMPLE / 'metadata.csv') as f:
    rows = [r for r in csv.DictReader(line for line in f if not line.startswith('#'))]
  by_latlon = {(round(float(r['lat']), 2), round(float(r['lon']), 2)): (r['country'], r['season'])
               for r in rows}
  got = [by_latlon[(round(float(a), 2), round(float(o), 2))]
         for a, o in zip(preds['lat'], preds['lon'])]
  assert list(preds['country']) == [c for c, _ in got]
  assert list(preds['season']) == [s for _, s in got]
  page = pathlib.Path(report.write_report(str(workdir))).read_text()
  assert (workdir / 'report' / 'by_country.png').is_file()
  assert (workdir / 'report' / 'by_season.png').is_file()
  assert f'<td>{got[0][0]}</td>' in page
