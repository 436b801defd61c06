"""Tests of data_prep/bigearthnet*.py: labels, records of the 14 real patches, splits, errors."""

import bz2
import csv
import json
import math
import pathlib
import shutil

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from data_prep import bigearthnet
from data_prep import bigearthnet_labels as L
from data_prep import bigearthnet_lists
from data_prep import common
from data_prep import shards
from stssl_jax.data import records

REPO = pathlib.Path(__file__).resolve().parent.parent
SAMPLE = REPO / 'data' / 'bigearthnet_sample'
PATCHES = SAMPLE / 'BigEarthNet-v1.0'
SNOWY = 'S2B_MSIL2A_20180204T94161_57_38'  # On the official seasonal-snow list.
SHARED_META = pathlib.Path('/work/shared/data/bigearthnet_metadata')
FRACS = '0.005,0.3,0.6'


def _table():
  with open(SAMPLE / 'metadata.csv') as f:
    return {r['patch']: r for r in csv.DictReader(line for line in f if line[0] != '#')}


def _split_lists():
  return {s: [n for n in (SAMPLE / 'splits' / f'{s}.csv').read_text().split('\n')
              if n and n[0] != '#'] for s in ('train', 'val', 'test')}


def _json(name):
  with open(PATCHES / name / f'{name}_labels_metadata.json') as f:
    return json.load(f)


def _args(images, out, *extra):
  return ['--images', str(images), '--lists', str(SAMPLE / 'splits'), '--metadata',
          str(SAMPLE / 'metadata.csv'), '--out', str(out), '--workers', '1',
          '--fractions', FRACS, *extra]


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  out = tmp_path_factory.mktemp('ben')
  assert bigearthnet.main(_args(PATCHES, out)) == 0
  return out


def test_nomenclatures_and_hand_checked_mapping():
  assert len(L.LABELS43) == len(set(L.LABELS43)) == 43 and set(L.TO19) == set(L.LABELS43)
  assert len(L.LABELS19) == 19 and set(v for v in L.TO19.values() if v) == set(L.LABELS19)
  assert (L.LABELS43[0], L.LABELS43[8], L.LABELS43[42]) == ('Mixed forest', 'Water bodies',
                                                            'Burnt areas')
  assert (L.LABELS19[2], L.LABELS19[10], L.LABELS19[18]) == ('Arable land', 'Urban fabric',
                                                             'Coastal wetlands')
  assert sum(v is None for v in L.TO19.values()) == 11
  cases = [
      (['Permanently irrigated land', 'Vineyards', 'Salines', 'Airports'], [13, 20, 38, 41],
       [2, 15, 18]),
      (['Continuous urban fabric', 'Sea and ocean', 'Estuaries'], [9, 18, 36], [9, 10]),
      (['Sparsely vegetated areas', 'Sclerophyllous vegetation'], [17, 32], [14, 16]),
      (['Bare rock', 'Burnt areas', 'Intertidal flats'], [29, 37, 42], []),  # No 19-class target.
      (_json('S2B_MSIL2A_20170924T93020_69_24')['labels'], [0, 1, 3, 8, 12], [0, 1, 3, 8, 12]),
  ]
  for names, idx43, idx19 in cases:
    label43, label19 = L.multi_hot(names)
    assert np.flatnonzero(label43).tolist() == idx43 and label43.dtype == np.uint8
    assert np.flatnonzero(label19).tolist() == idx19 and label19.shape == (19,)
  with pytest.raises(ValueError, match=r"x\.json: unknown BigEarthNet class 'Snow'"):
    L.multi_hot(['Snow'], 'x.json')
  assert L.parse_bands('rgb') == ('B04', 'B03', 'B02') and len(L.parse_bands('all')) == 12
  with pytest.raises(ValueError, match="unknown band 'B13'"):
    L.parse_bands('B02,B13')
  # METHOD 3.4's statistics of B04, B03, B02.
  np.testing.assert_allclose(L.original_stats(L.RGB_BANDS), [
      [590.2357, 614.2168, 429.9430], [675.8875, 582.8795, 572.4164]], atol=1e-4)


def _manual_bilinear(a, out):
  """Pixel-centre aligned bilinear upsampling with clamped edges, in float64."""
  c = np.clip((np.arange(out) + 0.5) * a.shape[0] / out - 0.5, 0, a.shape[0] - 1)
  i0 = np.floor(c).astype(int)
  i1, w = np.minimum(i0 + 1, a.shape[0] - 1), c - i0
  rows = a[i0] * (1 - w)[:, None] + a[i1] * w[:, None]
  return rows[:, i0] * (1 - w)[None] + rows[:, i1] * w[None]


def test_sample_records_match_the_raw_files(prepared):
  info = records.load_info(prepared, 'bigearthnet')
  lists, table = _split_lists(), _table()
  assert info['splits'] == {'train': 7, 'val': 3, 'test': 3, 'train_lb_0p005': 1,
                            'train_lb_0p3': 2, 'train_lb_0p6': 4}
  assert info['band_names'] == ['B04', 'B03', 'B02'] and info['skipped'] == []
  assert info['source']['removed']['seasonal_snow'] == {'train': 1, 'val': 0, 'test': 0}
  assert info['latlon_check']['checked'] == 13 and info['latlon_check']['max_m'] < 1.0
  pixels = []
  for split in ('train', 'val', 'test'):
    src = records.open_split(prepared, 'bigearthnet', split)
    assert [r['filename'] for r in src] == [n for n in lists[split] if n != SNOWY]
    counts43, counts19 = np.zeros(43, int), np.zeros(19, int)
    for i, rec in enumerate(src):
      name, meta = rec['filename'], _json(rec['filename'])
      assert rec['index'] == i and rec['date'] == meta['acquisition_date']
      idx43 = sorted(L.LABELS43.index(n) for n in meta['labels'])
      assert np.flatnonzero(rec['label']).tolist() == idx43
      idx19 = sorted({L.LABELS19.index(L.TO19[n]) for n in meta['labels'] if L.TO19[n]})
      assert np.flatnonzero(rec['label19']).tolist() == idx19
      counts43[idx43] += 1
      counts19[idx19] += 1
      row = table[name]
      assert (rec['country'], rec['season']) == (row['country'], row['season'])
      dist = bigearthnet.distance_m(rec['lat'], rec['lon'], float(row['lat']), float(row['lon']))
      assert dist < 1.0 and rec['lat'].dtype == np.float32
      for c, band in enumerate(('B04', 'B03', 'B02')):
        with rasterio.open(PATCHES / name / f'{name}_{band}.tif') as f:
          np.testing.assert_array_equal(rec['image'][..., c], f.read(1))
      if split == 'train':
        pixels.append(rec['image'].reshape(-1, 3).astype(np.float64))
    assert info['class_counts'][split] == counts43.tolist()
    assert info['class_counts19'][split] == counts19.tolist()
  pix = np.concatenate(pixels)
  np.testing.assert_allclose(info['band_mean'], pix.mean(0), rtol=1e-12)
  np.testing.assert_allclose(info['band_std'], pix.std(0), rtol=1e-9)
  np.testing.assert_allclose(info['band_mean_original'], [590.2357, 614.2168, 429.9430],
                             atol=1e-4)


def test_labeled_subsets_are_seeded_nested_copies_of_train(prepared):
  info = records.load_info(prepared, 'bigearthnet')
  train = records.open_split(prepared, 'bigearthnet', 'train')
  assert info['labeled_splits'] == {0.005: 'train_lb_0p005', 0.3: 'train_lb_0p3',
                                    0.6: 'train_lb_0p6'}
  expected = bigearthnet_lists.draw_labeled(7, (0.005, 0.3, 0.6), seed=0)
  assert info['labeled_indices'] == expected
  assert [len(v) for v in expected.values()] == [1, 2, 4]  # max(1, floor(f * 7)).
  assert set(expected[0.005]) <= set(expected[0.3]) <= set(expected[0.6])
  for frac, split in info['labeled_splits'].items():
    lb = records.open_split(prepared, 'bigearthnet', split)
    assert [r['index'] for r in lb] == info['labeled_indices'][frac]
    for r in lb:
      ref = train[r['index']]
      assert r['filename'] == ref['filename']
      np.testing.assert_array_equal(r['image'], ref['image'])
    np.testing.assert_allclose(info['lb_prevalence'][frac],
                               np.mean([r['label'] for r in lb], axis=0), rtol=1e-12)
    np.testing.assert_allclose(info['lb_prevalence19'][frac],
                               np.mean([r['label19'] for r in lb], axis=0), rtol=1e-12)


def test_all_bands_resampled_like_rasterio_with_two_worker_processes(tmp_path, prepared):
  args = _args(PATCHES, tmp_path, '--bands', 'all', '--shard_size', '3')
  args[args.index('--workers') + 1] = '2'
  assert bigearthnet.main(args) == 0
  info = records.load_info(tmp_path, 'bigearthnet_ms')
  rgb = records.open_split(prepared, 'bigearthnet', 'train')
  for i, rec in enumerate(records.open_split(tmp_path, 'bigearthnet_ms', 'train')):
    assert rec['index'] == i and rec['filename'] == rgb[i]['filename']
    np.testing.assert_array_equal(rec['image'][..., [3, 2, 1]], rgb[i]['image'])
  assert info['band_names'] == list(L.BANDS) and info['image_shape'] == [120, 120, 12]
  rec = records.open_split(tmp_path, 'bigearthnet_ms', 'val')[2]
  name = rec['filename']
  for c, band in enumerate(L.BANDS):
    with rasterio.open(PATCHES / name / f'{name}_{band}.tif') as f:
      raw = f.read(1)
      if raw.shape == (120, 120):
        np.testing.assert_array_equal(rec['image'][..., c], raw)
        continue
      np.testing.assert_array_equal(
          rec['image'][..., c], f.read(1, out_shape=(120, 120), resampling=Resampling.bilinear))
    # GDAL bilinear = pixel-centre aligned, clamped edges, rounded to the nearest integer.
    assert np.abs(rec['image'][..., c] - _manual_bilinear(raw.astype(float), 120)).max() < 0.5001
  np.testing.assert_allclose(info['band_std_original'][3], 675.88746967)


def test_rerun_is_idempotent_and_settings_are_checked(prepared, capsys):
  marker = records.dataset_dir(prepared, 'bigearthnet') / 'dataset_info.json'
  before = marker.stat().st_mtime_ns
  assert bigearthnet.main(_args(PATCHES, prepared)) == 0
  assert 'already prepared' in capsys.readouterr().out and marker.stat().st_mtime_ns == before
  assert bigearthnet.main(_args(PATCHES, prepared, '--seed', '1')) == 1
  assert "'seed': '0 -> 1'" in capsys.readouterr().err


def _copy_patches(tmp_path):
  root = tmp_path / 'BigEarthNet-v1.0'
  shutil.copytree(PATCHES, root)
  return root


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, capsys, monkeypatch):
  root = _copy_patches(tmp_path)
  name = 'S2B_MSIL2A_20170924T93021_41_29'  # 6th train patch: shard 2 of size 2.
  band = root / name / f'{name}_B03.tif'
  good = band.read_bytes()
  band.write_bytes(good[:5000])
  args = _args(root, tmp_path / 'out', '--shard_size', '2')
  assert bigearthnet.main(args) == 1
  assert str(band) in capsys.readouterr().err
  work, = (tmp_path / 'out').glob('.bigearthnet.work-*')
  assert sorted(p.name for p in work.glob('*.json')) == ['train-00000.json', 'train-00001.json']
  band.write_bytes(good)
  built = []
  run = shards._run_task
  monkeypatch.setattr(shards, '_run_task', lambda a: built.append(a[0]) or run(a))
  assert bigearthnet.main(args) == 0
  assert [(t.split, t.shard) for t in built] == [('train', 2), ('train', 3), ('val', 0),
                                                 ('val', 1), ('test', 0), ('test', 1)]
  assert not work.exists() and [p.name for p in (tmp_path / 'out').iterdir()] == ['stssl_bigearthnet']
  assert records.load_info(tmp_path / 'out', 'bigearthnet')['splits']['train'] == 7


def _break(root, kind):
  """Damages one train patch (the 1st, so later shards need re-indexing); returns (file, why)."""
  name = 'S2A_MSIL2A_20170617T113321_36_85'
  if kind == 'corrupt band':
    path = root / name / f'{name}_B02.tif'
    path.write_bytes(path.read_bytes()[:3000])
    return path, 'corrupt or unreadable GeoTIFF'
  if kind == 'missing band':
    path = root / name / f'{name}_B04.tif'
    path.unlink()
    return path, 'missing band file'
  if kind == 'malformed json':
    path = root / name / f'{name}_labels_metadata.json'
    path.write_text(path.read_text()[:-40])
    return path, 'malformed JSON'
  shutil.rmtree(root / name)
  return root / name, 'listed in the train list but absent from disk'


@pytest.mark.parametrize('kind', ['corrupt band', 'missing band', 'malformed json', 'absent'])
def test_bad_inputs_fail_naming_the_file_or_are_skipped(tmp_path, capsys, kind):
  root = _copy_patches(tmp_path)
  path, why = _break(root, kind)
  args = _args(root, tmp_path / 'out', '--shard_size', '2', '--fractions', '0.5')
  assert bigearthnet.main(args) == 1
  err = capsys.readouterr().err
  assert str(path) in err and why in err and '--skip_bad' in err
  assert not (tmp_path / 'out' / 'bigearthnet').exists()
  assert bigearthnet.main(args + ['--skip_bad', '--overwrite']) == 0
  out = capsys.readouterr().out
  assert 'Skipped 1 bad file(s)' in out and str(path) in out
  info = records.load_info(tmp_path / 'out', 'bigearthnet')
  assert info['skipped'][0]['file'] == str(path) and why in info['skipped'][0]['reason']
  train = records.open_split(tmp_path / 'out', 'bigearthnet', 'train')
  assert len(train) == 6 and [r['index'] for r in train] == list(range(6))  # Re-indexed.
  assert path.parent.name not in [r['filename'] for r in train]
  assert len(records.open_split(tmp_path / 'out', 'bigearthnet', 'train_lb_0p5')) == 3


def test_list_formats_and_list_errors(tmp_path):
  lists = _split_lists()
  seco = tmp_path / 'seco'
  seco.mkdir()
  for split, names in lists.items():
    (seco / f'bigearthnet-{split}.txt').write_text('\n'.join(names) + '\n')
  splits, report = bigearthnet_lists.load_splits(seco)
  assert splits['train'] == [n for n in lists['train'] if n != SNOWY]
  assert report['listed'] == {'train': 8, 'val': 3, 'test': 3} and report['kept']['train'] == 7
  plain = tmp_path / 'plain'
  plain.mkdir()
  for split, names in lists.items():
    text = 'patch,labels\n' + ''.join(f'folder/{n}/,x\n' for n in names)
    (plain / f'{split}.csv.bz2').write_bytes(bz2.compress(text.encode()))
  assert bigearthnet_lists.load_splits(plain)[0] == splits
  (plain / 'test.csv.bz2').write_bytes(bz2.compress(f'{lists["train"][0]}\n'.encode()))
  with pytest.raises(common.PrepError, match=f'{lists["train"][0]} is in both the train'):
    bigearthnet_lists.load_splits(plain)
  (plain / 'test.csv.bz2').write_bytes(bz2.compress(b'a\nb\na\n'))
  with pytest.raises(common.PrepError, match=r'test\.csv\.bz2: patch a is listed more than once'):
    bigearthnet_lists.load_splits(plain)
  (plain / 'val.csv.bz2').unlink()
  with pytest.raises(common.PrepError, match='no val list'):
    bigearthnet_lists.load_splits(plain)
  pickled = tmp_path / 'pickled'
  pickled.mkdir()
  for split in ('train', 'val', 'test'):
    (pickled / f'{split}.pkl').write_bytes(b'not read')
  try:
    import pandas  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    with pytest.raises(common.PrepError, match=r'train\.pkl: reading the pickled split tables '
                       'needs pandas'):
      bigearthnet_lists.load_splits(pickled)


def test_fraction_sizes_are_exact():
  assert [bigearthnet_lists.num_labeled(f, 269695) for f in (0.005, 0.01, 0.02, 0.04, 0.08)] == [
      1348, 2696, 5393, 10787, 21575]
  assert bigearthnet_lists.num_labeled(0.29, 100) == 29  # float 0.29 * 100 = 28.999...
  assert bigearthnet_lists.num_labeled(0.005, 7) == 1
  assert bigearthnet_lists.labeled_split_name(0.005) == 'train_lb_0p005'
  with pytest.raises(common.PrepError, match='not in'):
    bigearthnet_lists.fraction_key('1.5')


def test_official_lists_shipped_in_the_repo():
  splits, report = bigearthnet_lists.load_splits()
  assert {s: len(v) for s, v in splits.items()} == {'train': 269695, 'val': 123723,
                                                    'test': 125866}
  assert report['removed'] == {k: {'train': 0, 'val': 0, 'test': 0} for k in
                               ('seasonal_snow', 'cloud_and_shadow', 'no_19_class_targets')}
  n = len(splits['train'])
  draws = bigearthnet_lists.draw_labeled(n, (0.005, 0.01, 0.02, 0.04, 0.08), seed=0)
  assert [len(v) for v in draws.values()] == [1348, 2696, 5393, 10787, 21575]
  assert draws == bigearthnet_lists.draw_labeled(n, draws, seed=0)
  other = bigearthnet_lists.draw_labeled(n, (0.01,), seed=1)[0.01]
  assert other != draws[0.01] and len(set(other) & set(draws[0.01])) < 100  # ~ 2696^2 / n = 27.
  prev = None
  for idx in draws.values():
    assert len(set(idx)) == len(idx) and 0 <= min(idx) and max(idx) < n  # labeled ⊂ train
    assert prev is None or set(prev) <= set(idx)
    prev = idx


@pytest.mark.skipif(not SHARED_META.is_dir(), reason=f'{SHARED_META} (full BigEarthNet metadata '
                    'table, kept outside the repo) is not available on this machine')
def test_splits_against_the_full_metadata_table(tmp_path):
  z = np.load(SHARED_META / 'bigearthnet_v1_s2_patch_metadata.npz')
  names = z['patch_name'].astype(str)
  splits, _ = bigearthnet_lists.load_splits()
  for k, split in enumerate(('train', 'val', 'test')):
    assert set(splits[split]) == set(names[z['split_v1_official'] == k])
  snow = set(bigearthnet_lists.read_names(bigearthnet_lists.DEFAULT_LISTS /
                                          bigearthnet_lists.EXCLUSIONS['seasonal_snow']))
  assert snow == set(names[z['seasonal_snow']]) and len(snow) == 61707
  # A SeCo-like train list that still holds every snowy / cloudy patch: exclusion restores it.
  seco = tmp_path / 'seco'
  seco.mkdir()
  dirty = names[(z['split_v1_official'] == 0) | z['seasonal_snow'] | z['cloud_or_shadow']]
  (seco / 'bigearthnet-train.txt').write_text('\n'.join(dirty))
  for split in ('val', 'test'):
    (seco / f'bigearthnet-{split}.txt').write_text('\n'.join(splits[split]))
  seco_splits, report = bigearthnet_lists.load_splits(seco)
  assert len(dirty) > 269695 + 61707 and len(seco_splits['train']) == 269695
  assert report['removed']['seasonal_snow']['train'] == 61707
  table = bigearthnet_lists.read_metadata_table(SHARED_META /
                                                'bigearthnet_v1_s2_patch_metadata.npz')
  for name, row in _table().items():  # The repo's extract equals the full table.
    lat, lon, country, season = table[name]
    assert (np.float32(lat), np.float32(lon), country, season) == (
        np.float32(row['lat']), np.float32(row['lon']), row['country'], row['season'])


def test_patch_centre_is_the_reprojected_corner_mean():
  meta = _json('S2A_MSIL2A_20170613T101031_87_48')
  lat, lon = bigearthnet.patch_centre(meta['coordinates'], meta['projection'])
  assert meta['coordinates'] == {'ulx': 404400, 'uly': 5342400, 'lrx': 405600, 'lry': 5341200}
  with rasterio.open(PATCHES / 'S2A_MSIL2A_20170613T101031_87_48' /
                     'S2A_MSIL2A_20170613T101031_87_48_B04.tif') as f:
    assert f.crs.to_epsg() == 32633 and f.transform @ (60, 60) == (405000.0, 5341800.0)
  assert bigearthnet.distance_m(lat, lon, 48.22230529785156, 13.720948219299316) < 0.5
  assert math.isclose(bigearthnet.distance_m(0, 0, 0, 1), 111195.08, rel_tol=1e-6)


@pytest.mark.parametrize('extra,want', [
    (['--holdout_countries', 'FI'], lambda c, s: c == 'Finland'),
    (['--holdout_seasons', 'winter,autumn'], lambda c, s: s in ('Winter', 'Fall')),
    (['--holdout_countries', 'Finland', '--holdout_seasons', 'Fall', '--holdout_match', 'all'],
     lambda c, s: c == 'Finland' and s == 'Fall'),
    (['--holdout_countries', 'PT', '--holdout_seasons', 'Spring'],
     lambda c, s: c == 'Portugal' or s == 'Spring')])
def test_holdout_by_country_and_season_is_disjoint_and_reproducible(tmp_path, extra, want):
  table = _table()
  runs = []
  for k in range(2):
    assert bigearthnet.main(_args(PATCHES, tmp_path / str(k), *extra)) == 0
    runs.append({s: records.open_split(str(tmp_path / str(k)), 'bigearthnet', s)
                 for s in ('train', 'val', 'test', 'heldout')})
  names = {s: [src[i]['filename'] for i in range(len(src))] for s, src in runs[0].items()}
  again = {s: [src[i]['filename'] for i in range(len(src))] for s, src in runs[1].items()}
  assert names == again
  # Exactly the listed, non-excluded patches that match, and only in `heldout`.
  kept_before = {n for s in ('train', 'val', 'test') for n in _split_lists()[s]} - {SNOWY}
  expected = {n for n in kept_before if want(table[n]['country'], table[n]['season'])}
  assert set(names['heldout']) == expected and expected
  for s in ('train', 'val', 'test'):
    assert not set(names[s]) & expected, s
  # The records carry the country and season they were selected by.
  src = runs[0]['heldout']
  assert all(want(src[i]['country'], src[i]['season']) for i in range(len(src)))
  info = records.load_info(str(tmp_path / '0'), 'bigearthnet')
  assert info['splits']['heldout'] == len(expected)


def test_holdout_errors_name_the_problem(tmp_path, capsys):
  args = _args(PATCHES, tmp_path, '--holdout_countries', 'France')
  assert bigearthnet.main(args) != 0
  assert "'France'" in capsys.readouterr().err
  no_meta = [a for a in _args(PATCHES, tmp_path / 'b', '--holdout_seasons', 'Winter')]
  i = no_meta.index('--metadata')
  del no_meta[i:i + 2]
  assert bigearthnet.main(no_meta) != 0
  assert 'need --metadata' in capsys.readouterr().err
  # Holding out every season empties every split.
  assert bigearthnet.main(_args(PATCHES, tmp_path / 'c', '--holdout_seasons',
                                'Winter,Spring,Summer,Fall')) != 0
  assert 'removes all' in capsys.readouterr().err
