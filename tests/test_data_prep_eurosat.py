"""Tests of data_prep/eurosat.py: split protocol, labeled draw, end-to-end prep, bad inputs."""

import csv
import math
import pathlib
import shutil

import numpy as np
import PIL.Image
import pytest
import rasterio
from affine import Affine
import yaml

from data_prep import common
from data_prep import eurosat
from stssl_jax.data import records

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / 'data' / 'eurosat_sample'
CLASSES = ['AnnualCrop', 'Forest', 'HerbaceousVegetation', 'Highway', 'Industrial', 'Pasture',
           'PermanentCrop', 'Residential', 'River', 'SeaLake']
FULL_COUNTS = [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]


def _full_file_list():
  return [[f'{c}/{c}_{i}.jpg' for i in range(1, n + 1)] for c, n in zip(CLASSES, FULL_COUNTS)]


def _coords_csv():
  with open(SAMPLE / 'coords.csv') as f:
    return {r['filename']: (float(r['lat']), float(r['lon'])) for r in csv.DictReader(f)}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The bundled sample prepared once through the CLI, from the parent of `2750/`."""
  out = tmp_path_factory.mktemp('prepared')
  assert eurosat.main(['--images', str(SAMPLE), '--coords', str(SAMPLE / 'coords.csv'),
                       '--out', str(out)]) == 0
  return out


def _mini_raw(tmp_path, classes=('Forest', 'River', 'SeaLake'), per_class=10):
  """Copies the first `per_class` sample files (string order) of a few classes into tmp."""
  root = tmp_path / 'raw' / '2750'
  for c in classes:
    (root / c).mkdir(parents=True)
    for p in sorted((SAMPLE / '2750' / c).iterdir())[:per_class]:
      shutil.copy(p, root / c / p.name)
  shutil.copy(SAMPLE / 'coords.csv', tmp_path / 'coords.csv')
  return root


def test_sample_split_counts_and_string_order():
  root = common.find_class_root(SAMPLE, eurosat.RGB_EXTS)
  assert root == SAMPLE / '2750'
  classes, files = common.list_class_files(root, eurosat.RGB_EXTS)
  assert classes == CLASSES and [len(f) for f in files] == [30] * 10
  train, test = eurosat.split_pool_test(files)
  assert len(train) == 240 and len(test) == 60
  for label, c in enumerate(CLASSES):
    assert sum(lab == label for lab, _ in train) == 24  # floor(0.8 * 30)
    assert [n for lab, n in test if lab == label] == [f'{c}/{c}_{i}.jpg' for i in range(4, 10)]
  assert [n for _, n in train[:4]] == [f'AnnualCrop/AnnualCrop_{i}.jpg' for i in (1, 10, 11, 12)]


def test_full_eurosat_split_protocol():
  train, test = eurosat.split_pool_test(_full_file_list())
  assert (len(train), len(test)) == (21600, 5400)
  per_class = np.bincount([lab for lab, _ in train], minlength=10)
  np.testing.assert_array_equal(per_class, [n * 4 // 5 for n in FULL_COUNTS])
  names = {lab: [n for l2, n in test if l2 == lab] for lab in range(10)}
  train_names = {n for _, n in train}
  # String order: 1, 10, 100, 1000, ..., so for n_c = 3000 the cut falls inside the 4xx block.
  assert 'AnnualCrop/AnnualCrop_1000.jpg' in train_names
  assert 'AnnualCrop/AnnualCrop_3000.jpg' in train_names
  assert 'AnnualCrop/AnnualCrop_5.jpg' not in train_names
  assert [n for lab, n in train if lab == 0][-1] == 'AnnualCrop/AnnualCrop_458.jpg'
  assert names[0][0] == 'AnnualCrop/AnnualCrop_459.jpg'
  assert names[0][-1] == 'AnnualCrop/AnnualCrop_999.jpg'
  assert names[5][0] == 'Pasture/Pasture_639.jpg' and len(names[5]) == 400  # n_c = 2000
  assert names[3][0] == 'Highway/Highway_549.jpg' and len(names[3]) == 500  # n_c = 2500
  assert all(n * 4 // 5 == int((0.6 + 0.2) * n) for n in range(1, 20001))  # Original formula.


def _original_draw(num_labels, seed):
  """Literal transcription of the original code path (global legacy RNG, global indices)."""
  samples = [n for names in _full_file_list() for n in sorted(names)]  # ImageFolder order.
  targets = np.array([CLASSES.index(n.split('/')[0]) for n in samples])
  pool, start = [], 0
  for n in FULL_COUNTS:
    pool += list(range(start, start + int((0.6 + 0.2) * n)))
    start += n
  train_ids, train_targets = np.asarray(pool), targets[pool]
  state = np.random.get_state()
  try:
    np.random.seed(seed)
    shuffle_index = list(range(len(train_ids)))
    np.random.shuffle(shuffle_index)
    total_targets, total_idxs = train_targets[shuffle_index], train_ids[shuffle_index]
    lb_idx = []
    for c in range(10):
      idx = np.where(total_targets == c)[0]
      np.random.shuffle(idx)
      lb_idx.extend(idx[:num_labels // 10])
  finally:
    np.random.set_state(state)
  return [samples[i] for i in total_idxs[np.asarray(lb_idx)]]


def test_labeled_draw_reproduces_the_original_and_is_balanced():
  train, _ = eurosat.split_pool_test(_full_file_list())
  labels = [lab for lab, _ in train]
  for n in (10, 20, 40, 80):
    for seed in (0, 1):
      drawn = eurosat.draw_labeled(labels, n, 10, seed)
      assert [train[i][1] for i in drawn] == _original_draw(n, seed)
      assert np.bincount([labels[i] for i in drawn], minlength=10).tolist() == [n // 10] * 10
      assert len(set(drawn)) == n and all(0 <= i < len(train) for i in drawn)  # labeled ⊂ train
  assert eurosat.draw_labeled(labels, 40, 10, 0) == eurosat.draw_labeled(labels, 40, 10, 0)
  assert set(eurosat.draw_labeled(labels, 40, 10, 0)) != set(
      eurosat.draw_labeled(labels, 40, 10, 1))
  # Golden values of the seed-0, 10-label subset (frozen; guards against silent changes).
  assert [train[i][1].split('/')[1] for i in eurosat.draw_labeled(labels, 10, 10, 0)] == [
      'AnnualCrop_2214.jpg', 'Forest_1721.jpg', 'HerbaceousVegetation_226.jpg',
      'Highway_1355.jpg', 'Industrial_1210.jpg', 'Pasture_1460.jpg', 'PermanentCrop_2374.jpg',
      'Residential_2117.jpg', 'River_1191.jpg', 'SeaLake_1053.jpg']
  with pytest.raises(ValueError, match='multiple of the 10 classes'):
    eurosat.draw_labeled(labels, 15, 10, 0)
  with pytest.raises(ValueError, match='class 1 has only 1'):
    eurosat.draw_labeled([0, 0, 1], 4, 2, 0)


def test_end_to_end_sample(prepared):
  info = records.load_info(prepared, 'eurosat')
  assert info['splits'] == {'train': 240, 'test': 60, 'train_lb_10': 10, 'train_lb_20': 20,
                            'train_lb_40': 40, 'train_lb_80': 80}
  assert info['class_names'] == CLASSES and info['num_classes'] == 10
  assert info['class_counts']['train'] == [24] * 10 and info['class_counts']['test'] == [6] * 10
  assert info['class_counts']['train_lb_80'] == [8] * 10
  assert info['labeled_splits'] == {n: f'train_lb_{n}' for n in (10, 20, 40, 80)}
  assert info['skipped'] == [] and info['schema_version'] == 1
  coords = _coords_csv()
  train = records.open_split(prepared, 'eurosat', 'train')
  pixels = []
  for i in range(len(train)):
    rec = train[i]
    assert rec['index'] == i and rec['date'] == ''
    assert rec['label'] == CLASSES.index(rec['filename'].split('/')[0])
    lat, lon = coords[rec['filename']]
    assert rec['lat'] == np.float32(lat) and rec['lon'] == np.float32(lon)
    pixels.append(rec['image'])
  with PIL.Image.open(SAMPLE / '2750' / train[37]['filename']) as im:
    np.testing.assert_array_equal(train[37]['image'], np.asarray(im.convert('RGB')))
  pix = np.stack(pixels).reshape(-1, 3) / 255.0
  np.testing.assert_allclose(info['band_mean'], pix.mean(0), rtol=1e-10)
  np.testing.assert_allclose(info['band_std'], pix.std(0), rtol=1e-8)
  test = records.open_split(prepared, 'eurosat', 'test')
  assert sorted(r['filename'] for r in test) == sorted(
      f'{c}/{c}_{i}.jpg' for c in CLASSES for i in range(4, 10))
  labels = [train[i]['label'] for i in range(len(train))]
  for n in (10, 80):
    lb = records.open_split(prepared, 'eurosat', f'train_lb_{n}')
    assert [r['index'] for r in lb] == info['labeled_indices'][n] == eurosat.draw_labeled(
        labels, n, 10, 0)
    for r in lb:
      assert r['filename'] == train[r['index']]['filename']
      np.testing.assert_array_equal(r['image'], train[r['index']]['image'])


def test_rerun_is_idempotent_and_settings_are_checked(prepared, capsys):
  marker = records.dataset_dir(prepared, 'eurosat') / 'dataset_info.json'
  before = marker.stat().st_mtime_ns
  args = ['--images', str(SAMPLE / '2750'), '--coords', str(SAMPLE / 'coords.csv'),
          '--out', str(prepared)]
  assert eurosat.main(args) == 0
  assert 'already prepared' in capsys.readouterr().out
  assert marker.stat().st_mtime_ns == before
  assert eurosat.main(args + ['--seed', '1']) == 1
  assert "'seed': '0 -> 1'" in capsys.readouterr().err and marker.stat().st_mtime_ns == before


def test_corrupt_jpeg_and_missing_coordinates(tmp_path, capsys):
  root = _mini_raw(tmp_path)
  bad_jpeg = root / 'River' / 'River_12.jpg'
  bad_jpeg.write_bytes(bad_jpeg.read_bytes()[:600])  # Truncated.
  args = ['--images', str(root), '--coords', str(tmp_path / 'coords.csv'),
          '--out', str(tmp_path / 'out'), '--num_labels', '3,6']
  assert eurosat.main(args) == 1
  err = capsys.readouterr().err
  assert str(bad_jpeg) in err and 'unreadable image' in err and '--skip_bad' in err
  assert not (tmp_path / 'out' / 'stssl_eurosat').exists()

  rows = (tmp_path / 'coords.csv').read_text().splitlines()
  (tmp_path / 'coords.csv').write_text('\n'.join(r for r in rows if 'Forest_15.jpg' not in r))
  bad_jpeg.unlink()
  assert eurosat.main(args) == 1
  err = capsys.readouterr().err
  assert str(root / 'Forest' / 'Forest_15.jpg') in err and 'no coordinates' in err

  bad_jpeg.write_bytes(b'\xff\xd8\xff' + b'\x00' * 50)
  gray, small = root / 'SeaLake' / 'SeaLake_1.jpg', root / 'SeaLake' / 'SeaLake_10.jpg'
  PIL.Image.new('L', (64, 64), 90).save(gray)
  PIL.Image.new('RGB', (32, 32), (1, 2, 3)).save(small)
  assert eurosat.main(args + ['--skip_bad']) == 0
  out = capsys.readouterr().out
  assert 'Skipped 4 bad file(s)' in out
  assert f'{bad_jpeg}: unreadable image' in out and f'{gray}: unreadable image' in out
  assert 'mode L, expected RGB' in out and f'{small}: image shape (32, 32, 3) differs' in out
  info = records.load_info(tmp_path / 'out', 'eurosat')
  assert sorted(pathlib.Path(s['file']).name for s in info['skipped']) == [
      'Forest_15.jpg', 'River_12.jpg', 'SeaLake_1.jpg', 'SeaLake_10.jpg']
  assert info['class_counts']['train'] == [7, 7, 6] and info['class_counts']['test'] == [2, 2, 2]


@pytest.mark.parametrize('content,match', [
    ('name,lat,lon\na,1,2\n', r"missing column\(s\) \['filename'\]"),
    ('filename,lat,lon\nA_1.jpg,north,2\n', "entry 'A_1.jpg': lat/lon 'north'"),
    ('filename,lat,lon\nA_1.jpg,95,2\n', "entry 'A_1.jpg': lat 95.0, lon 2.0 are not WGS84"),
    ('filename,lat,lon\nA/A_1.jpg,1,2\nA_1,1,3\n', "'A_1': conflicting duplicate"),
])
def test_bad_coordinate_tables_name_file_and_entry(tmp_path, content, match):
  path = tmp_path / 'c.csv'
  path.write_text(content)
  with pytest.raises(common.PrepError, match=match) as err:
    eurosat.read_coords(path)
  assert str(path) in str(err.value)


def test_coordinate_keys_and_ambiguous_roots(tmp_path):
  path = tmp_path / 'c.csv'
  path.write_text('filename,class,label,lat,lon\n'
                  'X/X_1.jpg,X,0,1.5,2.5\nX_2.jpg,X,0,3,4\nX_3,X,0,5,6\n')
  assert eurosat.read_coords(path) == {'X_1': (1.5, 2.5), 'X_2': (3.0, 4.0), 'X_3': (5.0, 6.0)}
  (tmp_path / 'a' / 'x').mkdir(parents=True)
  (tmp_path / 'b').mkdir()
  with pytest.raises(common.PrepError, match=r"no class folders .* \['a', 'b'\]"):
    common.find_class_root(tmp_path, eurosat.RGB_EXTS)
  raw = _mini_raw(tmp_path / 'zip', classes=('Forest', 'River'), per_class=1)
  (raw.parent / '__MACOSX' / 'Forest').mkdir(parents=True)  # Clutter of zips made on macOS.
  (raw.parent / '__MACOSX' / 'Forest' / '._Forest_1.jpg').write_bytes(b'\0')
  assert common.find_class_root(tmp_path / 'zip', eurosat.RGB_EXTS) == raw


def test_yaml_coordinates_are_lon_first(tmp_path):
  root = _mini_raw(tmp_path, classes=('Highway', 'Pasture'), per_class=5)
  coords = _coords_csv()
  table = {pathlib.Path(f).stem: [lon, lat, 32] for f, (lat, lon) in coords.items()}
  with open(tmp_path / 'meta.yaml', 'w') as f:
    yaml.safe_dump(table, f)
  result = eurosat.prepare(str(root), str(tmp_path / 'out'), str(tmp_path / 'meta.yaml'),
                           num_labels=(2,))
  assert result['splits'] == {'train': 8, 'test': 2, 'train_lb_2': 2}
  for rec in records.open_split(tmp_path / 'out', 'eurosat', 'train'):
    lat, lon = coords[rec['filename']]
    assert rec['lat'] == np.float32(lat) and rec['lon'] == np.float32(lon)


def _utm_meridian_lat(northing_m):
  """Latitude on a UTM central meridian (WGS84): Snyder's footpoint-latitude series."""
  a, f, k0 = 6378137.0, 1 / 298.257223563, 0.9996
  e2 = f * (2 - f)
  mu = northing_m / k0 / (a * (1 - e2 / 4 - 3 * e2**2 / 64 - 5 * e2**3 / 256))
  e1 = (1 - math.sqrt(1 - e2)) / (1 + math.sqrt(1 - e2))
  phi = (mu + (3 * e1 / 2 - 27 * e1**3 / 32) * math.sin(2 * mu)
         + (21 * e1**2 / 16 - 55 * e1**4 / 32) * math.sin(4 * mu)
         + 151 * e1**3 / 96 * math.sin(6 * mu) + 1097 * e1**4 / 512 * math.sin(8 * mu))
  return math.degrees(phi)


def test_ms_geotiffs_centre_lat_lon(tmp_path):
  # (class, epsg, centre northing, expected lat); all centres on zone 32's meridian, lon 9.
  cases = [('Forest', 32632, 5_000_000.0, _utm_meridian_lat(5e6)),
           ('Forest', 32632, 0.0, 0.0),
           ('River', 32732, 10_000_000.0, 0.0),  # Southern zone: false northing 10,000 km.
           ('River', 32732, 5_000_000.0, -_utm_meridian_lat(5e6))]
  assert abs(_utm_meridian_lat(5e6) - 45.1534772) < 1e-7
  rng = np.random.default_rng(0)
  root = tmp_path / 'EuroSAT_MS'
  written, expected = {}, {}
  for k in range(10):  # 5 files per class; file k uses case k % 2 (+ 2 for River).
    c = 'Forest' if k < 5 else 'River'
    _, epsg, northing, lat = cases[(k % 2) + (2 if c == 'River' else 0)]
    image = rng.integers(0, 10000, size=(13, 64, 64), dtype=np.uint16)
    path = root / c / f'{c}_{k}.tif'
    path.parent.mkdir(parents=True, exist_ok=True)
    transform = Affine(10.0, 0.0, 500000.0 - 320, 0.0, -10.0, northing + 320)  # 10 m pixels.
    with rasterio.open(path, 'w', driver='GTiff', width=64, height=64, count=13, dtype='uint16',
                       crs=f'EPSG:{epsg}', transform=transform) as dst:
      dst.write(image)
    written[f'{c}/{path.name}'], expected[f'{c}/{path.name}'] = image.transpose(1, 2, 0), lat
    _, lat64, lon64 = eurosat.read_ms(path)  # Exact centre: a half-pixel slip is ~5e-5 deg.
    assert abs(lat64 - lat) < 1e-8 and abs(lon64 - 9.0) < 1e-8
  result = eurosat.prepare(str(tmp_path), str(tmp_path / 'out'), num_labels=(2, 4))
  assert result['path'].endswith('stssl_eurosat_ms/1.0.0')
  info = records.load_info(tmp_path / 'out', 'eurosat_ms')
  assert info['class_names'] == ['Forest', 'River'] and info['image_dtype'] == 'uint16'
  assert info['splits'] == {'train': 8, 'test': 2, 'train_lb_2': 2, 'train_lb_4': 4}
  train_pixels = []
  for split in ('train', 'test'):
    for rec in records.open_split(tmp_path / 'out', 'eurosat_ms', split):
      assert rec['image'].dtype == np.uint16 and rec['image'].shape == (64, 64, 13)
      np.testing.assert_array_equal(rec['image'], written[rec['filename']])
      assert abs(rec['lon'] - 9.0) < 1e-6
      assert abs(rec['lat'] - expected[rec['filename']]) < 1e-5  # float32 at ~45 deg.
      if split == 'train':
        train_pixels.append(rec['image'])
  pix = np.stack(train_pixels).reshape(-1, 13).astype(np.float64)
  np.testing.assert_allclose(info['band_mean'], pix.mean(0), rtol=1e-12)  # Raw DN units.
  with pytest.raises(common.PrepError, match='--coords is not used with GeoTIFF'):
    eurosat.prepare(str(root), str(tmp_path / 'o2'), coords=str(SAMPLE / 'coords.csv'))
