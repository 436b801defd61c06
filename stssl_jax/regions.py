"""Geographic hold-out regions (the metadata-shift evaluation, issue 7): data_prep selects by
them, the report names them.

EuroSAT selects by a lat/lon box or ISO country codes (offline reverse geocoding),
BigEarthNet by the country and season of its metadata table. The held-out samples are removed
from every training and evaluation split and written as their own split `heldout`, so
training never sees them and evaluation reports in-region (`test`) and out-of-region
(`heldout`) metrics separately.
"""

import ast
from typing import Optional, Sequence

import numpy as np


def parse_box(text: Optional[str]) -> Optional[tuple[float, float, float, float]]:
  """'lat_min,lat_max,lon_min,lon_max' -> tuple, validated; None passes through."""
  if not text:
    return None
  try:
    box = tuple(float(v) for v in text.split(','))
  except ValueError as e:
    raise ValueError(f'--holdout_box {text!r}: expected lat_min,lat_max,lon_min,lon_max') from e
  if len(box) != 4 or not (box[0] < box[1] and box[2] < box[3]):
    raise ValueError(f'--holdout_box {text!r}: expected lat_min<lat_max,lon_min<lon_max')
  return box


def country_codes(lat: Sequence[float], lon: Sequence[float]) -> list[str]:
  """ISO country code of the nearest populated place (offline, `reverse_geocoder`)."""
  try:
    import reverse_geocoder  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError('--holdout_countries needs the offline geocoder: '
                     'pip install "stssl-jax[geo]" (reverse_geocoder)') from e
  hits = reverse_geocoder.search(list(zip(map(float, lat), map(float, lon))), mode=1,
                                 verbose=False)
  return [h['cc'] for h in hits]


def in_region(lat, lon, box=None, countries: Sequence[str] = ()) -> np.ndarray:
  """Bool [N]: inside the lat/lon box or in one of the countries (ISO alpha-2 codes)."""
  lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
  held = np.zeros(lat.shape, bool)
  if box is not None:
    held |= (lat >= box[0]) & (lat <= box[1]) & (lon >= box[2]) & (lon <= box[3])
  if countries:
    wanted = {c.strip().upper() for c in countries}
    held |= np.isin(np.array(country_codes(lat, lon)), list(wanted))
  return held


# BigEarthNet's ten countries as its metadata names them, by ISO alpha-2 code, so that
# --holdout_countries takes the same codes for both datasets.
BIGEARTHNET_COUNTRIES = {'AT': 'Austria', 'BE': 'Belgium', 'CH': 'Switzerland', 'FI': 'Finland',
                         'IE': 'Ireland', 'LT': 'Lithuania', 'LU': 'Luxembourg',
                         'PT': 'Portugal', 'RS': 'Serbia', 'XK': 'Kosovo'}
_SEASON_ALIASES = {'autumn': 'fall'}


def _canonical(values: Sequence[str], known: Sequence[str], what: str, aliases=None
               ) -> set[str]:
  """Lower-cased `values` mapped through `aliases`, each checked against `known`."""
  aliases = aliases or {}
  known_l = {k.lower() for k in known}
  out = set()
  for v in values:
    key = aliases.get(v.strip().lower(), v.strip().lower())
    if key not in known_l:
      raise ValueError(f'--holdout_{what} {v!r}: not in the metadata table; it has '
                       f'{sorted(set(known))}')
    out.add(key)
  return out


def select_by_attributes(names: Sequence[str], country: Sequence[str], season: Sequence[str],
                         countries: Sequence[str] = (), seasons: Sequence[str] = (),
                         match: str = 'any') -> set[str]:
  """Names held out by country and/or season (BigEarthNet's metadata table).

  Args:
    names, country, season: parallel per-patch sequences (the table's country names, e.g.
      'Portugal', and seasons 'Winter' | 'Spring' | 'Summer' | 'Fall').
    countries: country names or ISO alpha-2 codes (PT, FI, ...), any case.
    seasons: season names, any case ('Autumn' = 'Fall').
    match: 'any' holds out a patch matching either list, 'all' one matching both (e.g.
      Finland in winter); with one list given they are the same.
  Returns:
    the held-out names.
  Raises:
    ValueError: an unknown country, season or match, naming it.
  """
  if match not in ('any', 'all'):
    raise ValueError(f'--holdout_match must be any or all, got {match!r}')
  codes = {k.lower(): v for k, v in BIGEARTHNET_COUNTRIES.items()}
  countries = [codes.get(c.strip().lower(), c) for c in countries]
  want_c = _canonical(countries, [c for c in country if c], 'countries')
  want_s = _canonical(seasons, [s for s in season if s], 'seasons', _SEASON_ALIASES)
  held = set()
  for n, c, s in zip(names, country, season):
    hits = []
    if want_c:
      hits.append(c.lower() in want_c)
    if want_s:
      hits.append(s.lower() in want_s)
    if hits and (all(hits) if match == 'all' else any(hits)):
      held.add(n)
  return held


def region_names(info: dict) -> dict[str, str]:
  """{split: 'in region' or 'out of region: <what was held out>'} from the dataset info.

  EuroSAT's prep record has holdout_countries/holdout_box; BigEarthNet's info has
  holdout.settings {countries, seasons, match}.
  """
  prep = info.get('prep') or {}
  if isinstance(prep, str):  # Older TFDS metadata stored nested values as their repr.
    try:
      prep = ast.literal_eval(prep)
    except (ValueError, SyntaxError):
      prep = {}
  ben = (info.get('holdout') or {}).get('settings') or {}
  held = [', '.join(prep.get('holdout_countries') or []), prep.get('holdout_box') or '',
          ', '.join(ben.get('countries') or []), ', '.join(ben.get('seasons') or [])]
  held = [h for h in held if h]
  joiner = ' and ' if ben.get('match') == 'all' else '; '
  what = 'out of region' + (f': {joiner.join(held)}' if held else '')
  return {s: what if s.startswith('heldout') else 'in region' for s in info.get('splits', {})}
