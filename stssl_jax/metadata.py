"""Spatiotemporal metadata codec: (lat, lon, date) <-> the 4-d vector m. NumPy only.

The data layer (pipeline, data_prep, shift evaluation) uses this module without flax or jax;
the teacher's encoder E and the location featurizers are in `models/meta_encoder.py`.

METHOD 1.1: m = [lat/90, lon/180, sin(theta), cos(theta)] with theta = 2*pi*d/365 and d the
1-based day of year (time of day and year ignored; d = 366 gives theta > 2*pi). The precision
reproduces the original `process_metainfo` bit for bit: lat/90 and lon/180 in float64 then cast
to float32; `d / 365 * 2 * pi` and sin/cos in float32, in that operation order.

METHOD 1.4: `apply_switches` implements the `no_loc` / `no_time` ablations.

`decode` inverts the location part (degrees from m[:, :2]); the day of year is not
recoverable from (sin, cos) beyond its angle and is not needed downstream.
"""

import datetime
import math
import re
from typing import Any, Optional, Sequence

import numpy as np

# Width of the encoded metadata vector m = [lat/90, lon/180, sin, cos].
META_DIM = 4
LAT_SCALE, LON_SCALE = 90.0, 180.0

# The date every sample gets under `no_time` (METHOD 1.4).
NO_TIME_DATE = '2017-01-01 00:00:00'

# Lenient: single-digit month/day (EuroSAT's dummy '2000-1-1 00:00:00'); the time is ignored.
_DATE_RE = re.compile(r'^\s*(\d{4})-(\d{1,2})-(\d{1,2})'  # year, month, day
                      r'(?:[ T]\d{1,2}:\d{1,2}(?::\d{1,2}(?:\.\d*)?)?)?\s*$')


def _as_str(date: Any) -> Optional[str]:
  """Returns `date` as str, or None when it is missing (None, empty, NaN, non-string)."""
  if isinstance(date, bytes):
    date = date.decode('utf-8')
  if isinstance(date, str):
    return date if date.strip() else None
  return None


def is_date(text: str) -> bool:
  """Whether `text` is in the date grammar (YYYY-M-D[ HH:MM:SS]); calendar not checked."""
  return _DATE_RE.match(text) is not None


def day_of_year(date: str) -> int:
  """1-based day of year of a `YYYY-M-D[ HH:MM:SS]` string (2016-12-31 -> 366).

  Raises:
    ValueError: the string does not parse or is not a valid calendar date.
  """
  text = _as_str(date)
  match = _DATE_RE.match(text) if text is not None else None
  if match is None:
    raise ValueError(f'Cannot parse date {date!r}; expected YYYY-M-D[ HH:MM:SS]')
  try:
    parsed = datetime.date(*(int(g) for g in match.groups()))
  except ValueError as e:
    raise ValueError(f'Invalid date {date!r}: {e}') from e
  return parsed.timetuple().tm_yday


def encode(lat: Sequence[float], lon: Sequence[float], dates: Sequence[Optional[str]],
           missing_date: str = 'raise') -> np.ndarray:
  """Encodes metadata as in the original `process_metainfo`.

  Args:
    lat: [B] latitudes in degrees.
    lon: [B] longitudes in degrees.
    dates: [B] date strings; None or '' is a missing date.
    missing_date: 'raise' (default) raises on a missing date; 'nan' reproduces the original,
      which puts NaN in both time components (the NaN then spreads through the teacher).

  Returns:
    [B, 4] float32 `[lat/90, lon/180, sin(theta), cos(theta)]`.

  Raises:
    ValueError: a date is missing (with missing_date='raise') or unparsable; the message names
      the sample index.
  """
  if missing_date not in ('raise', 'nan'):
    raise ValueError(f"missing_date must be 'raise' or 'nan', got {missing_date!r}")
  lat = np.asarray(lat, np.float64).reshape(-1)
  lon = np.asarray(lon, np.float64).reshape(-1)
  if not len(lat) == len(lon) == len(dates):
    raise ValueError(f'lat, lon, dates lengths differ: {len(lat)}, {len(lon)}, {len(dates)}')
  days = np.empty(len(dates), np.float32)
  for i, date in enumerate(dates):
    if _as_str(date) is None:
      if missing_date == 'raise':
        raise ValueError(f'Sample {i}: missing date ({date!r}); pass missing_date="nan" to '
                         'reproduce the original NaN encoding')
      days[i] = np.nan
      continue
    try:
      days[i] = day_of_year(date)
    except ValueError as e:
      raise ValueError(f'Sample {i}: {e}') from e
  # float32 arithmetic in the original's order: ((d / 365) * 2) * pi.
  theta = days / np.float32(365) * np.float32(2) * np.float32(math.pi)
  return np.stack([(lat / LAT_SCALE).astype(np.float32), (lon / LON_SCALE).astype(np.float32),
                   np.sin(theta), np.cos(theta)], axis=-1)


def decode_location(m) -> tuple[np.ndarray, np.ndarray]:
  """(lat [B], lon [B]) float64 degrees of encoded metadata m [B, META_DIM]."""
  m = np.asarray(m)
  return (m[:, 0].astype(np.float64) * LAT_SCALE, m[:, 1].astype(np.float64) * LON_SCALE)


def encode_location(m, lat, lon) -> np.ndarray:
  """m [B, META_DIM] with its location part replaced by (lat [B], lon [B]) degrees (a copy)."""
  m = np.array(m)
  m[:, 0] = np.asarray(lat, np.float64) / LAT_SCALE
  m[:, 1] = np.asarray(lon, np.float64) / LON_SCALE
  return m


def apply_switches(lat: Sequence[float], lon: Sequence[float], dates: Sequence[Optional[str]],
                   no_loc: bool, no_time: bool) -> tuple[np.ndarray, np.ndarray, list]:
  """METHOD 1.4 ablations, applied before `encode` on every split.

  Args:
    lat: [B] latitudes.
    lon: [B] longitudes.
    dates: [B] date strings.
    no_loc: set lat = lon = 0 for every sample.
    no_time: set every date to 2017-01-01 00:00:00 (constant time components).

  Returns:
    (lat [B] float64, lon [B] float64, dates list of B strings), new objects.
  """
  lat = np.array(lat, np.float64).reshape(-1)
  lon = np.array(lon, np.float64).reshape(-1)
  dates = list(dates)
  if no_loc:
    lat = np.zeros_like(lat)
    lon = np.zeros_like(lon)
  if no_time:
    dates = [NO_TIME_DATE] * len(dates)
  return lat, lon, dates
