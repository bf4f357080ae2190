"""Download KuaiRand-Pure and convert its logs to sharded TFRecords with a feature config.

KuaiRand (Gao et al., "KuaiRand: An Unbiased Sequential Recommendation Dataset with
Randomly Exposed Videos", CIKM 2022) is a log of the Kuaishou app, licensed CC BY-SA
4.0. The Pure variant has three interaction logs, each with the columns of
`LOG_COLUMNS`, plus a user table and a video table:

    log_standard_4_08_to_4_21_pure.csv   normal recommendations, 2022-04-08 .. 04-21
    log_standard_4_22_to_5_08_pure.csv   normal recommendations, 2022-04-22 .. 05-08
    log_random_4_22_to_5_08_pure.csv     randomly exposed videos, 2022-04-22 .. 05-08
    user_features_pure.csv               one row per user_id
    video_features_basic_pure.csv        one row per video_id, with author_id

Commands:

    python -m data.kuairand download --dest=DIR [--url=URL]
    python -m data.kuairand prepare --src=DIR --out=OUT [--split=date|random] ...
    python -m data.kuairand prepare --src=DIR --out=OUT --split=passes [--pass_days=1]
        [--valid_fraction=0.1] [--seed=2023] ...

Definition, one sample per log row:

- domain: the `tab` column (int64), the app page that showed the video. Tabs with
  fewer than `--min_tab_rows` training rows are merged into the domain `OTHER_TAB`
  (-1). The TFRecords store the merged value in `tab` and the original in `raw_tab`.
  A validation or test row whose tab never occurs in training gets the config's
  fallback domain (`--fallback_tab`), as serving would, or is dropped and counted
  when there is no fallback.
- tasks: is_click, is_like, is_follow, is_comment, is_forward, long_view. The other
  outcome columns (play time, is_hate, profile and comment stays) are recorded after
  the exposure, so they are not features.
- prior ids: user_id, video_id and the video's author_id (-1 for a video missing
  from the video table). Vocabularies hold the ids of training rows seen at least
  `--min_id_rows` times. Vocabularies longer than `INLINE_VOCABULARY_MAX` go to
  `OUT/vocab/<feature>.txt`, which the config names relative to itself.
- general features: the user columns of `USER_FEATURES` and the video columns
  video_type, upload_type, music_type and tag (the first tag of a comma-separated
  list), all as strings with training vocabularies; video_duration (milliseconds,
  bucketized at training quantiles, -1 when unknown, which gets a bucket of its own);
  and the hour of day, `hourmin // 100` (hourmin is HHMM).
  Integral floats such as "1.0" become "1", and empty values become "", which maps
  to the out-of-vocabulary bucket, as do the features of ids missing from the tables.
- domain-side features: the domain id is embedded by the model itself
  (`domain.embed`). Added here: for the row's (user, domain) and (video, domain)
  pairs, the number of training rows (exposures), of clicked training rows, and the
  smoothed click rate `(clicks + prior * k) / (exposures + k)`, with `k` =
  `SMOOTHING_K` and `prior` the training click rate. A training row's own row is
  left out of its statistics (exposures - 1, clicks - is_click). Validation and test
  rows get the statistics of all training rows. All six are bucketized at training
  quantiles.
- split: "date" (default) puts rows dated up to `--train_end_date` in train, up to
  `--valid_end_date` in valid and later ones in test. "random" assigns every
  standard-log row independently with probabilities 0.8/0.1/0.1, from uniform draws
  of `numpy.random.default_rng(seed)` taken in file order. The random-exposure log
  becomes `test_random`: under the date split only its rows after
  `--valid_end_date` (the test period), under the random split all of them.

Daily passes (`--split=passes`), for training in passes that warm-start from the
previous one. Records have the same columns and encodings as above, but:

- periods: period k holds the standard-log rows dated [d0 + k * pass_days, d0 +
  (k + 1) * pass_days), d0 being the earliest date. Pass i (`OUT/pass_00i`) trains on
  the i-th period with rows and tests on all rows of the next period with rows, so
  the last such period is a test set only. A period without rows is merged into the
  next period with rows, so the pass dates have no gaps.
  `valid_fraction` of the training period's rows, by the uniform draws of
  `numpy.random.default_rng(seed)` taken in file order (one per standard-log row,
  valid when below the fraction), are the pass's validation rows. Random-log rows of
  the test period become `test_random`, written only where there are some.
- statistics: those of pass i count the training rows (not the validation rows) of
  passes 1..i, with the training click rate of those rows as the prior. A training
  row leaves itself out, and validation and test rows see all of them.
- domains: fixed for every pass, see `build_pass_domain_map`: the tabs of the first
  pass's training rows with at least `--min_tab_rows` rows, plus `OTHER_TAB`,
  which is always present and, by default, the fallback for tabs first seen later.
- feature config: one `OUT/feature_config.json` for every pass. Vocabulary
  features have no vocabulary but `min_frequency` (`PRIOR_MIN_FREQUENCY` and
  `PRIOR_OOV_BUCKETS` hashed buckets for the prior ids, `GENERAL_MIN_FREQUENCY`
  for the others), so the trainer admits them from each pass's training counts.
  Bucketized features keep the same boundaries in every pass, chosen as described in
  `build_pass_feature_config`.
- outputs: `OUT/pass_NNN/<split>-<shard>-of-<shards>.tfrecord`, OUT/feature_config.json,
  OUT/stats.json (rows and positive rates per pass, split and domain) and
  OUT/passes.json, the list of passes with their dates and row counts, written last.

Outputs in OUT: `<split>-<shard>-of-<shards>.tfrecord` (uncompressed tf.train.Example,
rows dealt round-robin to the shards of their split), `feature_config.json`,
`vocab/*.txt` and `stats.json` (rows and positive rates per split and domain). Every
record also has the columns raw_tab, date and time_ms, which the config does not list.

The logs are read row by row with the csv module, twice: the first pass counts the
training statistics, the second writes the records. Memory grows with the number of
distinct users, videos and (id, tab) pairs, not with the number of rows; in the pass
layout with the number of distinct (date, id, tab) triples of training rows.
"""

import bisect
import collections
import csv
import dataclasses
import datetime
import glob
import hashlib
import http.client
import itertools
import json
import os
import re
import socket
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from typing import Any, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from data.movielens import default_data_dir
from pepnet_tf import features as features_lib

DATASET_NAME = "kuairand_pure"
RECORD_URL = "https://zenodo.org/records/10439422"
# NOTE: the archive name is expected from the KuaiRand-1K file of the same record
# and has not been checked against the record's file list.
DEFAULT_URL = RECORD_URL + "/files/KuaiRand-Pure.tar.gz"

STANDARD_LOGS = ("log_standard_4_08_to_4_21_pure.csv", "log_standard_4_22_to_5_08_pure.csv")
RANDOM_LOG = "log_random_4_22_to_5_08_pure.csv"
USER_TABLE = "user_features_pure.csv"
VIDEO_TABLE = "video_features_basic_pure.csv"

LOG_COLUMNS = (
    "user_id", "video_id", "date", "hourmin", "time_ms", "is_click", "is_like",
    "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "play_time_ms",
    "duration_ms", "profile_stay_time", "comment_stay_time", "is_profile_enter",
    "is_rand", "tab")
TASKS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "long_view")
# The log columns the converter reads; the others may be absent.
USED_LOG_COLUMNS = ("user_id", "video_id", "date", "hourmin", "time_ms", "tab") + TASKS

USER_FEATURES = (
    "user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
    "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
    "register_days_range") + tuple(f"onehot_feat{index}" for index in range(18))
VIDEO_FEATURES = ("video_type", "upload_type", "music_type", "tag")
DOMAIN_SIDE_FEATURES = (
    "user_tab_exposures", "user_tab_clicks", "user_tab_click_rate",
    "video_tab_exposures", "video_tab_clicks", "video_tab_click_rate")
PRIOR_FEATURES = ("user_id", "video_id", "author_id")
DOMAIN_FEATURE = "tab"

OTHER_TAB = -1
UNKNOWN_AUTHOR = -1
UNKNOWN_DURATION = -1.0
SMOOTHING_K = 10.0
EMBEDDING_DIM = 16
INLINE_VOCABULARY_MAX = 1000
VOCABULARY_DIR = "vocab"

SPLITS = ("train", "valid", "test")
RANDOM_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_METHODS = ("date", "random")
DEFAULT_SEED = 2023
DEFAULT_TRAIN_END_DATE = 20220428
DEFAULT_VALID_END_DATE = 20220503
DEFAULT_NUM_BUCKETS = 20
DEFAULT_ROWS_PER_SHARD = 250_000

_DOWNLOAD_BLOCK_BYTES = 1 << 20
_PROGRESS_LOG_BYTES = 64 << 20
_PROGRESS_LOG_ROWS = 500_000


class DownloadError(RuntimeError):
  """Raised when the archive cannot be downloaded, verified or extracted."""


class UnsafeArchiveError(DownloadError):
  """Raised for an archive member that would be written outside the destination."""


class InputError(ValueError):
  """Raised for a malformed log or feature table: missing column, bad row or value."""


class _TransferInterrupted(Exception):
  """A transfer stopped early. The `.part` file keeps what arrived."""


# ---------------------------------------------------------------------------
# Download.
# ---------------------------------------------------------------------------


def archive_name(url: str) -> str:
  """Return the file name of the archive at `url`, the last segment of its path."""
  name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
  return name or "KuaiRand-Pure.tar.gz"


def _manual_steps(url: str, dest: str) -> str:
  archive = os.path.join(dest, archive_name(url))
  return (
      f"To download by hand, fetch the KuaiRand-Pure archive from {RECORD_URL} on a "
      f"machine with internet access and either copy it to {archive} and run this "
      f"command again (it then only extracts), or extract it yourself so that the "
      f"log and feature CSV files lie in {dest} or a folder below it.")


def download(dest: str, url: str = DEFAULT_URL, checksum: Optional[str] = None,
             expected_size: Optional[int] = None, retries: int = 3,
             retry_wait: float = 2.0, timeout: float = 60.0, extract: bool = True) -> str:
  """Download the KuaiRand-Pure archive into `dest` and extract it there.

  An unfinished download is kept as `<archive>.part` and resumed with an HTTP Range
  request, within this call after a lost connection and on the next call after an
  interruption. A server that ignores the Range header sends the whole file, and the
  download restarts from byte 0. An archive already present under its final name
  is not downloaded again.

  Args:
    dest: directory for the archive and the extracted files.
    url: address of the archive.
    checksum: "sha256:<hex>" or "md5:<hex>" of the archive, checked when given. No
      digest of the published archive is known to this module.
    expected_size: size of the archive in bytes, checked when given, in addition to
      the Content-Length check.
    retries: further attempts after a lost connection, each resuming the `.part`.
    retry_wait: seconds before the first retry; the wait grows linearly.
    timeout: socket timeout in seconds.
    extract: whether to extract the archive after downloading.

  Returns:
    The path of the archive.

  Raises:
    DownloadError: the server failed or is unreachable, the size or the checksum
      does not match, or the archive is unreadable or unsafe.
  """
  algorithm, digest = _parse_checksum(checksum) if checksum else (None, None)
  os.makedirs(dest, exist_ok=True)
  archive = os.path.join(dest, archive_name(url))
  if os.path.exists(archive):
    logging.info("%s exists, so it is not downloaded again (delete it to download "
                 "afresh).", archive)
    if algorithm:
      _verify_checksum(archive, algorithm, digest, delete_on_mismatch=False)
  else:
    _download_with_retries(url, archive, dest, expected_size, retries, retry_wait, timeout)
    if algorithm:
      _verify_checksum(archive + ".part", algorithm, digest, delete_on_mismatch=True)
    os.replace(archive + ".part", archive)
    logging.info("Downloaded %s (%d bytes)", archive, os.path.getsize(archive))
  if extract:
    extract_archive(archive, dest)
  return archive


def _parse_checksum(checksum: str) -> Tuple[str, str]:
  algorithm, _, digest = checksum.partition(":")
  algorithm = algorithm.strip().lower()
  digest = digest.strip().lower()
  lengths = {"sha256": 64, "md5": 32}
  if algorithm not in lengths or not re.fullmatch(f"[0-9a-f]{{{lengths[algorithm]}}}", digest):
    raise DownloadError(
        "checksum must be 'sha256:<64 hex digits>' or 'md5:<32 hex digits>'. "
        f"Received: {checksum!r}")
  return algorithm, digest


def _verify_checksum(path: str, algorithm: str, expected: str,
                     delete_on_mismatch: bool) -> None:
  digest = hashlib.new(algorithm)
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(_DOWNLOAD_BLOCK_BYTES), b""):
      digest.update(block)
  actual = digest.hexdigest()
  if actual == expected:
    logging.info("%s matches %s %s", path, algorithm, expected)
    return
  if delete_on_mismatch:
    os.remove(path)
    raise DownloadError(
        f"The downloaded file has {algorithm} {actual}, expected {expected}. It was "
        "deleted; run the command again to download it afresh.")
  raise DownloadError(
      f"{path} has {algorithm} {actual}, expected {expected}. Delete it and run the "
      "command again to download it afresh.")


def _download_with_retries(url: str, archive: str, dest: str, expected_size: Optional[int],
                           retries: int, retry_wait: float, timeout: float) -> None:
  part = archive + ".part"
  attempt = 0
  while True:
    try:
      total = _fetch_once(url, part, dest, expected_size, timeout)
      break
    except _TransferInterrupted as error:
      attempt += 1
      if attempt > retries:
        raise DownloadError(
            f"Downloading {url} failed after {attempt} attempts: {error}. The bytes "
            f"received so far are kept in {part}, and running the command again "
            f"resumes from there. {_manual_steps(url, dest)}") from error
      wait = retry_wait * attempt
      logging.warning("Download of %s interrupted (%s). Retry %d of %d in %.1f s.",
                      url, error, attempt, retries, wait)
      time.sleep(wait)

  size = os.path.getsize(part)
  if total is None:
    logging.warning("%s sent no Content-Length, so the size of %s (%d bytes) is "
                    "unchecked.", url, part, size)
  elif size != total:
    raise DownloadError(
        f"{part} has {size} bytes, but the server reported {total}. Delete it and "
        "run the command again.")
  if expected_size is not None and size != expected_size:
    raise DownloadError(
        f"{part} has {size} bytes, expected {expected_size}. Delete it and run the "
        "command again, or check expected_size.")


def _fetch_once(url: str, part: str, dest: str, expected_size: Optional[int],
                timeout: float) -> Optional[int]:
  """Append to `part` what the server sends; return the full size, None if unknown."""
  offset = os.path.getsize(part) if os.path.exists(part) else 0
  request = urllib.request.Request(url, headers={"User-Agent": "pepnet_tf-kuairand"})
  if offset:
    request.add_header("Range", f"bytes={offset}-")
  try:
    response = urllib.request.urlopen(request, timeout=timeout)  # pylint: disable=consider-using-with
  except urllib.error.HTTPError as error:
    if error.code == 416 and offset:
      # The part file is not a prefix the server can continue: start over.
      os.remove(part)
      raise _TransferInterrupted(
          f"the server rejected the range from byte {offset} (HTTP 416), so the "
          "download restarts from byte 0") from error
    raise DownloadError(_http_error_message(url, dest, error.code, error.reason)) from error
  except urllib.error.URLError as error:
    if isinstance(error.reason, (socket.timeout, ConnectionResetError)):
      raise _TransferInterrupted(f"connecting failed: {error.reason}") from error
    raise DownloadError(
        f"Cannot reach {url}: {error.reason}. This machine may be offline or unable "
        f"to resolve the host. {_manual_steps(url, dest)}") from error
  except (socket.timeout, ConnectionError, http.client.HTTPException) as error:
    raise _TransferInterrupted(f"connecting failed: {error}") from error

  with response:
    total = _content_length(response)
    if offset and response.status == 206:
      start, full_size = _parse_content_range(response.headers.get("Content-Range"))
      if start != offset:
        os.remove(part)
        raise _TransferInterrupted(
            f"the server resumed at byte {start} instead of {offset}, so the download "
            "restarts from byte 0")
      mode = "ab"
      total = full_size if full_size is not None else (
          offset + total if total is not None else None)
      logging.info("Resuming %s at byte %d", url, offset)
    else:
      if offset:
        logging.info("The server ignored the Range request (HTTP %d), so the download "
                     "restarts from byte 0.", response.status)
      mode = "wb"
      offset = 0
    if expected_size is not None and total is not None and total != expected_size:
      raise DownloadError(
          f"{url} reports {total} bytes, expected {expected_size}. The file on the "
          f"server differs from the expected archive. {_manual_steps(url, dest)}")

    received = offset
    progress = _DownloadProgress(url, total, offset)
    with open(part, mode) as handle:
      while True:
        try:
          block = response.read(_DOWNLOAD_BLOCK_BYTES)
        except (socket.timeout, ConnectionError, http.client.HTTPException) as error:
          raise _TransferInterrupted(
              f"connection lost after {received} of {total} bytes: {error}") from error
        if not block:
          break
        handle.write(block)
        received += len(block)
        progress.update(received)
    progress.finish(received)

  if total is not None and received < total:
    raise _TransferInterrupted(f"connection closed after {received} of {total} bytes")
  return total


def _content_length(response) -> Optional[int]:
  value = response.headers.get("Content-Length")
  return int(value) if value is not None and value.strip().isdigit() else None


def _parse_content_range(value: Optional[str]) -> Tuple[Optional[int], Optional[int]]:
  """Return (first byte, full size) of a `bytes first-last/size` header; None if absent."""
  match = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
  if not match:
    return None, None
  full_size = None if match.group(2) == "*" else int(match.group(2))
  return int(match.group(1)), full_size


def _http_error_message(url: str, dest: str, code: int, reason: Any) -> str:
  if code == 404:
    return (
        f"{url} returned HTTP 404 (Not Found). The archive may have another name: "
        f"its name is expected, not confirmed, so check the file list of Zenodo "
        f"record 10439422 ({RECORD_URL}) and pass the right address with --url. "
        f"{_manual_steps(url, dest)}")
  if 500 <= code < 600:
    return (f"{url} returned HTTP {code} ({reason}), a server error. Try again later. "
            f"{_manual_steps(url, dest)}")
  return f"{url} returned HTTP {code} ({reason}). {_manual_steps(url, dest)}"


class _DownloadProgress:
  """Reports download progress: a rewritten stderr line on a terminal, else a log line."""

  def __init__(self, url: str, total: Optional[int], start: int):
    self.url = url
    self.total = total
    self.start = start
    self.started = time.monotonic()
    self.interactive = sys.stderr.isatty()
    self.last_report_bytes = start
    self.last_report_time = 0.0

  def _describe(self, received: int) -> str:
    seconds = max(time.monotonic() - self.started, 1e-6)
    rate = (received - self.start) / seconds / 1e6
    if self.total:
      return (f"{received / 1e6:.1f} of {self.total / 1e6:.1f} MB "
              f"({100.0 * received / self.total:.0f}%), {rate:.1f} MB/s")
    return f"{received / 1e6:.1f} MB, {rate:.1f} MB/s"

  def update(self, received: int) -> None:
    now = time.monotonic()
    if self.interactive:
      if now - self.last_report_time >= 0.5:
        sys.stderr.write(f"\r{self._describe(received)}   ")
        sys.stderr.flush()
        self.last_report_time = now
    elif received - self.last_report_bytes >= _PROGRESS_LOG_BYTES:
      logging.info("Downloading %s: %s", self.url, self._describe(received))
      self.last_report_bytes = received

  def finish(self, received: int) -> None:
    if self.interactive:
      sys.stderr.write(f"\r{self._describe(received)}   \n")
      sys.stderr.flush()


def extract_archive(archive: str, dest: str) -> None:
  """Extract a tar archive (any compression) into `dest` after checking every member.

  Raises:
    UnsafeArchiveError: a member has an absolute path, a `..` component, a link
      pointing outside `dest`, or is a device or FIFO. Nothing is extracted then.
    DownloadError: the archive is not a readable tar file.
  """
  try:
    with tarfile.open(archive, "r:*") as tar:
      members = tar.getmembers()
      for member in members:
        _check_member(member, archive)
      tar.extractall(dest, members=members, filter="data")
  except tarfile.FilterError as error:
    raise UnsafeArchiveError(
        f"{archive} has an unsafe member: {error}. Nothing more was extracted.") from error
  except (tarfile.TarError, EOFError, zlib.error) as error:
    raise DownloadError(
        f"{archive} is not a readable tar archive ({error}). Delete it and run the "
        "command again to download it afresh.") from error
  logging.info("Extracted %d members of %s into %s", len(members), archive, dest)


def _unsafe_path(name: str) -> Optional[str]:
  """Return why a member or link path would leave the destination, None if it stays."""
  normalized = name.replace("\\", "/")
  if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
    return "an absolute path"
  if ".." in normalized.split("/"):
    return "a '..' component"
  return None


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
  problem = _unsafe_path(member.name)
  if problem is None and (member.issym() or member.islnk()):
    link_problem = _unsafe_path(member.linkname)
    if link_problem is not None:
      problem = f"a link target with {link_problem} ({member.linkname!r})"
  if problem is None and not (member.isfile() or member.isdir() or member.issym()
                              or member.islnk()):
    problem = "a special file type (device or FIFO)"
  if problem is not None:
    raise UnsafeArchiveError(
        f"{archive} has member {member.name!r} with {problem}, which could write "
        "outside the destination. Nothing was extracted.")


# ---------------------------------------------------------------------------
# Reading the source files.
# ---------------------------------------------------------------------------


def find_file(src: str, name: str) -> str:
  """Return the path of `name` in `src` or its subfolders; the shallowest if several."""
  if not os.path.isdir(src):
    raise FileNotFoundError(
        f"Source directory {src} not found. Run `python -m data.kuairand download "
        f"--dest={src}` or extract the KuaiRand-Pure archive there.")
  matches = []
  for root, dirs, files in os.walk(src):
    dirs.sort()
    if name in files:
      path = os.path.join(root, name)
      matches.append((os.path.relpath(path, src).count(os.sep), path))
  if not matches:
    raise FileNotFoundError(
        f"{name} not found in {src} or its subfolders. Run `python -m data.kuairand "
        f"download --dest={src}` or extract the KuaiRand-Pure archive there.")
  matches.sort()
  if len(matches) > 1:
    logging.warning("%s found %d times under %s; using %s", name, len(matches), src,
                    matches[0][1])
  return matches[0][1]


def _open_csv(path: str, required: Sequence[str]) -> Tuple[Any, Any, List[str]]:
  """Open a CSV file and check its header; return (handle, reader, header)."""
  handle = open(path, newline="", encoding="utf-8-sig")  # pylint: disable=consider-using-with
  reader = csv.reader(handle)
  try:
    header = [name.strip() for name in next(reader)]
  except StopIteration:
    handle.close()
    raise InputError(f"{path} is empty; expected a header line.") from None
  missing = [name for name in required if name not in header]
  if missing:
    handle.close()
    raise InputError(
        f"{path} has no column {', '.join(missing)}. Header: {','.join(header)}")
  return handle, reader, header


def _check_field_count(path: str, reader, row: List[str], header: List[str]) -> None:
  if len(row) != len(header):
    raise InputError(
        f"{path}, line {reader.line_num}: {len(row)} fields, but the header has "
        f"{len(header)}.")


def _parse_int(text: str, path: str, line: int, column: str) -> int:
  try:
    return int(text)
  except ValueError:
    pass
  try:
    number = float(text)
  except ValueError:
    number = float("nan")
  if not number.is_integer():
    raise InputError(f"{path}, line {line}: column {column} is {text!r}, expected an integer.")
  return int(number)


def normalize_category(text: str) -> str:
  """Return a table value as a category string: "1.0" -> "1", "" for empty."""
  text = text.strip()
  if not text:
    return ""
  try:
    number = float(text)
  except ValueError:
    return text
  return str(int(number)) if number.is_integer() else text


def first_tag(text: str) -> str:
  """Return the first tag of a comma-separated tag list, "" if there is none."""
  return normalize_category(text.split(",", 1)[0])


@dataclasses.dataclass
class VideoInfo:
  """The columns of one video that the converter uses."""

  author_id: int
  duration: float
  categories: Tuple[str, ...]


def read_user_table(path: str) -> Dict[int, Tuple[str, ...]]:
  """Read the user table into user_id -> the `USER_FEATURES` values as strings."""
  handle, reader, header = _open_csv(path, ("user_id",) + USER_FEATURES)
  id_column = header.index("user_id")
  columns = [header.index(name) for name in USER_FEATURES]
  users = {}
  with handle:
    for row in reader:
      _check_field_count(path, reader, row, header)
      user = _parse_int(row[id_column], path, reader.line_num, "user_id")
      if user in users:
        raise InputError(f"{path}, line {reader.line_num}: user_id {user} appears twice.")
      users[user] = tuple(normalize_category(row[column]) for column in columns)
  return users


def read_video_table(path: str) -> Dict[int, VideoInfo]:
  """Read the video table into video_id -> author, duration and `VIDEO_FEATURES`."""
  handle, reader, header = _open_csv(
      path, ("video_id", "author_id", "video_duration") + VIDEO_FEATURES)
  id_column = header.index("video_id")
  author_column = header.index("author_id")
  duration_column = header.index("video_duration")
  columns = [header.index(name) for name in VIDEO_FEATURES]
  tag_position = VIDEO_FEATURES.index("tag")
  videos = {}
  with handle:
    for row in reader:
      _check_field_count(path, reader, row, header)
      line = reader.line_num
      video = _parse_int(row[id_column], path, line, "video_id")
      if video in videos:
        raise InputError(f"{path}, line {line}: video_id {video} appears twice.")
      author_text = row[author_column].strip()
      author = _parse_int(author_text, path, line, "author_id") if author_text else UNKNOWN_AUTHOR
      duration_text = row[duration_column].strip()
      try:
        duration = float(duration_text) if duration_text else UNKNOWN_DURATION
      except ValueError:
        raise InputError(f"{path}, line {line}: column video_duration is "
                         f"{duration_text!r}, expected a number.") from None
      if not duration >= 0:  # also true for NaN
        duration = UNKNOWN_DURATION
      categories = [normalize_category(row[column]) for column in columns]
      categories[tag_position] = first_tag(row[columns[tag_position]])
      videos[video] = VideoInfo(author, duration, tuple(categories))
  return videos


class LogRow(NamedTuple):
  """The columns of one log row that the converter uses."""

  line: int
  user_id: int
  video_id: int
  date: int
  hour: int
  time_ms: int
  tab: int
  labels: Tuple[int, ...]  # in the order of TASKS


def iter_log(path: str) -> Iterator[LogRow]:
  """Yield the rows of a log file one at a time, checking fields and values.

  Raises:
    InputError: a used column is missing, a row has the wrong number of fields, or
      a value is not an integer, a date is not YYYYMMDD, an hourmin is not HHMM, or
      a label is not 0 or 1. The message names the file and the line.
  """
  handle, reader, header = _open_csv(path, USED_LOG_COLUMNS)
  positions = {name: header.index(name) for name in USED_LOG_COLUMNS}
  user_column, video_column = positions["user_id"], positions["video_id"]
  date_column, hourmin_column = positions["date"], positions["hourmin"]
  time_column, tab_column = positions["time_ms"], positions["tab"]
  label_columns = [positions[task] for task in TASKS]
  with handle:
    for row in reader:
      _check_field_count(path, reader, row, header)
      line = reader.line_num
      date = _parse_int(row[date_column], path, line, "date")
      if not 19000101 <= date <= 29991231:
        raise InputError(f"{path}, line {line}: date {date} is not a YYYYMMDD date.")
      hourmin = _parse_int(row[hourmin_column], path, line, "hourmin")
      if not 0 <= hourmin <= 2359:
        raise InputError(f"{path}, line {line}: hourmin {hourmin} is not an HHMM time.")
      labels = tuple(_parse_int(row[column], path, line, task)
                     for column, task in zip(label_columns, TASKS))
      if any(label not in (0, 1) for label in labels):
        raise InputError(
            f"{path}, line {line}: labels {dict(zip(TASKS, labels))} must be 0 or 1.")
      yield LogRow(
          line=line,
          user_id=_parse_int(row[user_column], path, line, "user_id"),
          video_id=_parse_int(row[video_column], path, line, "video_id"),
          date=date,
          hour=hourmin // 100,
          time_ms=_parse_int(row[time_column], path, line, "time_ms"),
          tab=_parse_int(row[tab_column], path, line, "tab"),
          labels=labels)


# ---------------------------------------------------------------------------
# Split assignment and training statistics (first pass).
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class PrepareOptions:
  """Options of `prepare`; see the flags of the same names."""

  split: str = "date"
  seed: int = DEFAULT_SEED
  train_end_date: int = DEFAULT_TRAIN_END_DATE
  valid_end_date: int = DEFAULT_VALID_END_DATE
  min_tab_rows: int = 0
  fallback_tab: str = "auto"
  test_random: bool = True
  num_buckets: int = DEFAULT_NUM_BUCKETS
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  min_id_rows: int = 1

  def validate(self) -> None:
    if self.split not in SPLIT_METHODS:
      raise ValueError(f"split must be one of {list(SPLIT_METHODS)}. Received: {self.split!r}")
    for name in ("train_end_date", "valid_end_date"):
      value = getattr(self, name)
      if not 19000101 <= value <= 29991231:
        raise ValueError(f"{name} must be a YYYYMMDD date. Received: {value!r}")
    if self.train_end_date >= self.valid_end_date:
      raise ValueError(
          f"train_end_date ({self.train_end_date}) must be before valid_end_date "
          f"({self.valid_end_date}).")
    if self.num_buckets < 2:
      raise ValueError(f"num_buckets must be >= 2. Received: {self.num_buckets!r}")
    if self.rows_per_shard < 1:
      raise ValueError(f"rows_per_shard must be >= 1. Received: {self.rows_per_shard!r}")
    if self.min_tab_rows < 0 or self.min_id_rows < 1:
      raise ValueError(
          "min_tab_rows must be >= 0 and min_id_rows >= 1. Received: "
          f"{self.min_tab_rows!r}, {self.min_id_rows!r}")
    parse_fallback_tab(self.fallback_tab)


def parse_fallback_tab(value: str) -> Any:
  """Parse `--fallback_tab`: "auto", "none", "other" or an integer tab id."""
  text = str(value).strip().lower()
  if text in ("auto", "none", "other"):
    return text
  try:
    return int(text)
  except ValueError:
    raise ValueError(
        "fallback_tab must be 'auto', 'none', 'other' or an integer tab id. "
        f"Received: {value!r}") from None


class RandomSplitter:
  """Assigns rows to splits at random, by default train/valid/test 0.8/0.1/0.1.

  Row i gets the i-th uniform draw of `numpy.random.default_rng(seed)`, drawn in
  fixed blocks, so two passes over the same files assign every row the same split.
  The row goes to the first split whose cumulative fraction exceeds the draw.
  """

  _BLOCK = 65536

  def __init__(self, seed: int, fractions: Sequence[float] = RANDOM_SPLIT_FRACTIONS,
               names: Sequence[str] = SPLITS):
    self._rng = np.random.default_rng(seed)
    self._draws: List[float] = []
    self._next = 0
    self._cuts = np.cumsum(fractions)[:-1].tolist()
    self._names = list(names)

  def __call__(self, row: LogRow) -> str:
    del row  # the split depends on the row's position only
    if self._next == len(self._draws):
      self._draws = self._rng.random(self._BLOCK).tolist()
      self._next = 0
    draw = self._draws[self._next]
    self._next += 1
    for cut, name in zip(self._cuts, self._names):
      if draw < cut:
        return name
    return self._names[-1]


def date_splitter(options: PrepareOptions):
  """Return a function from a log row to its split under the date split."""
  def split_of(row: LogRow) -> str:
    if row.date <= options.train_end_date:
      return "train"
    return "valid" if row.date <= options.valid_end_date else "test"
  return split_of


def make_splitter(options: PrepareOptions):
  """Return a fresh function from standard-log rows, in file order, to their split."""
  if options.split == "random":
    return RandomSplitter(options.seed)
  return date_splitter(options)


def in_test_random(row: LogRow, options: PrepareOptions) -> bool:
  """Return whether a random-log row belongs to `test_random`."""
  return options.split == "random" or row.date > options.valid_end_date


@dataclasses.dataclass
class TrainingCounts:
  """Counts over the training rows, per raw tab, from the first pass."""

  tab_rows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  # (id, raw tab) -> [rows, clicked rows]
  user_tab: Dict[Tuple[int, int], List[int]] = dataclasses.field(default_factory=dict)
  video_tab: Dict[Tuple[int, int], List[int]] = dataclasses.field(default_factory=dict)
  user_rows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  video_rows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  hours: set = dataclasses.field(default_factory=set)
  label_sums: List[int] = dataclasses.field(default_factory=lambda: [0] * len(TASKS))
  rows: int = 0

  def add(self, row: LogRow) -> None:
    click = row.labels[0]
    self.rows += 1
    self.tab_rows[row.tab] += 1
    self.user_rows[row.user_id] += 1
    self.video_rows[row.video_id] += 1
    self.hours.add(row.hour)
    for index, label in enumerate(row.labels):
      self.label_sums[index] += label
    for table, key in ((self.user_tab, (row.user_id, row.tab)),
                       (self.video_tab, (row.video_id, row.tab))):
      counts = table.get(key)
      if counts is None:
        table[key] = [1, click]
      else:
        counts[0] += 1
        counts[1] += click


@dataclasses.dataclass
class SourceFiles:
  """Paths of the source files found under `--src`."""

  standard_logs: List[str]
  random_log: Optional[str]
  user_table: str
  video_table: str


def find_sources(src: str, test_random: bool) -> SourceFiles:
  """Locate every source file under `src`; raise FileNotFoundError naming a missing one."""
  return SourceFiles(
      standard_logs=[find_file(src, name) for name in STANDARD_LOGS],
      random_log=find_file(src, RANDOM_LOG) if test_random else None,
      user_table=find_file(src, USER_TABLE),
      video_table=find_file(src, VIDEO_TABLE))


def count_rows(sources: SourceFiles, options: PrepareOptions
               ) -> Tuple[TrainingCounts, Dict[str, int], Dict[str, set]]:
  """First pass: training statistics, rows per split and tabs seen per split.

  Every row of every log is parsed, so malformed input fails before anything is
  written.
  """
  counts = TrainingCounts()
  split_rows = collections.Counter()
  split_tabs = collections.defaultdict(set)
  splitter = make_splitter(options)
  for path in sources.standard_logs:
    for row in _logged_rows(path, "Counting"):
      split = splitter(row)
      split_rows[split] += 1
      split_tabs[split].add(row.tab)
      if split == "train":
        counts.add(row)
  if sources.random_log is not None:
    for row in _logged_rows(sources.random_log, "Counting"):
      if in_test_random(row, options):
        split_rows["test_random"] += 1
        split_tabs["test_random"].add(row.tab)
  return counts, dict(split_rows), dict(split_tabs)


def _logged_rows(path: str, activity: str) -> Iterator[LogRow]:
  start = time.time()
  rows = 0
  for rows, row in enumerate(iter_log(path), start=1):
    if rows % _PROGRESS_LOG_ROWS == 0:
      logging.info("%s %s: %d rows", activity, os.path.basename(path), rows)
    yield row
  logging.info("%s %s: %d rows in %.1f s", activity, os.path.basename(path), rows,
               time.time() - start)


# ---------------------------------------------------------------------------
# Domains and per (id, domain) statistics.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class DomainMap:
  """Mapping from raw tabs to domain values.

  Attributes:
    values: the domain values of the config: kept tabs in ascending order, then
      `OTHER_TAB` if some tabs were merged.
    merged_tabs: training tabs with fewer than `min_tab_rows` rows, now `OTHER_TAB`.
    fallback: the domain of a tab unseen in training, None to drop such rows.
  """

  values: List[int]
  merged_tabs: List[int]
  fallback: Optional[int]

  def domain_of(self, tab: int) -> Optional[int]:
    """Return the domain value of a raw tab; the fallback (maybe None) if unseen."""
    if tab in self._kept_tabs:
      return tab
    if tab in self._merged_tabs:
      return OTHER_TAB
    return self.fallback

  def __post_init__(self):
    self._kept_tabs = set(self.values) - {OTHER_TAB}
    self._merged_tabs = set(self.merged_tabs)


def build_domain_map(tab_rows: Mapping[int, int], min_tab_rows: int,
                     fallback_tab: str) -> DomainMap:
  """Choose the domain values from the training rows per tab.

  Args:
    tab_rows: training rows per raw tab.
    min_tab_rows: tabs with fewer training rows are merged into `OTHER_TAB`.
    fallback_tab: "auto" (`OTHER_TAB` if it exists, else none), "none", "other", or
      an integer domain value.

  Raises:
    ValueError: a real tab equals `OTHER_TAB`, every tab would be merged, or the
      fallback is not a domain value.
  """
  if OTHER_TAB in tab_rows:
    raise ValueError(
        f"The training rows contain tab {OTHER_TAB}, the value reserved for merged tabs.")
  kept_tabs = sorted(tab for tab, rows in tab_rows.items() if rows >= min_tab_rows)
  merged = sorted(tab for tab, rows in tab_rows.items() if rows < min_tab_rows)
  if not kept_tabs:
    raise ValueError(
        f"min_tab_rows={min_tab_rows} merges every tab: the largest has "
        f"{max(tab_rows.values())} training rows.")
  values = kept_tabs + ([OTHER_TAB] if merged else [])

  choice = parse_fallback_tab(fallback_tab)
  if choice == "auto":
    fallback = OTHER_TAB if merged else None
  elif choice == "none":
    fallback = None
  elif choice == "other":
    if not merged:
      raise ValueError(
          "fallback_tab='other', but no tab was merged into the 'other' domain. Raise "
          "--min_tab_rows, or choose another fallback.")
    fallback = OTHER_TAB
  else:
    if choice not in values:
      raise ValueError(f"fallback_tab {choice} is not a domain value. Domains: {values}")
    fallback = choice
  if merged and fallback != OTHER_TAB:
    logging.warning(
        "Tabs %s are merged into domain %d, but the fallback is %s: a serving request "
        "must then send tab %d for them itself.", merged, OTHER_TAB, fallback, OTHER_TAB)
  return DomainMap(values=values, merged_tabs=merged, fallback=fallback)


def merge_by_domain(table: Mapping[Tuple[int, int], List[int]],
                    domains: DomainMap) -> Dict[Tuple[int, int], Tuple[int, int]]:
  """Sum per (id, raw tab) [rows, clicks] into per (id, domain) (rows, clicks)."""
  merged = collections.defaultdict(lambda: [0, 0])
  for (key, tab), (rows, clicks) in table.items():
    total = merged[(key, domains.domain_of(tab))]
    total[0] += rows
    total[1] += clicks
  return {key: (rows, clicks) for key, (rows, clicks) in merged.items()}


def smoothed_rate(clicks: float, exposures: float, prior_rate: float,
                  k: float = SMOOTHING_K) -> float:
  """Return `(clicks + prior_rate * k) / (exposures + k)`."""
  return (clicks + prior_rate * k) / (exposures + k)


def row_statistics(counts: Optional[Tuple[int, int]], click: int, is_train: bool,
                   prior_rate: float) -> Tuple[float, float, float]:
  """Return (exposures, clicks, smoothed click rate) of a row's (id, domain) pair.

  A training row leaves itself out: one exposure and its own click less.

  NOTE: inside one (id, domain) pair, a clicked training row therefore gets one
  click less than an unclicked one. A model that memorizes id x click-count bucket
  can partly read training labels from this; out-of-fold statistics would remove
  it. Validation and test rows are not affected.
  """
  rows, clicks = counts if counts is not None else (0, 0)
  if is_train:
    rows -= 1
    clicks -= click
  return float(rows), float(clicks), smoothed_rate(clicks, rows, prior_rate)


def weighted_quantile_boundaries(values: Sequence[float], weights: Sequence[int],
                                 num_buckets: int) -> List[float]:
  """Return the distinct inner cut points of `num_buckets` equal-weight buckets.

  Cut k (1 <= k < num_buckets) is the smallest value with at least k / num_buckets
  of the total weight at or below it, so it equals the "inverted_cdf" quantile of
  the list in which each value is repeated `weight` times. The comparison is done in
  integers, so a level that falls exactly on a cumulative weight does not depend on
  rounding. Cuts are rounded to 6 decimals, and ties merge them.

  Args:
    values: the distinct values.
    weights: non-negative integer weight (row count) of each value.
    num_buckets: number of buckets.
  """
  values = np.asarray(values, dtype=np.float64)
  weights = np.asarray(weights, dtype=np.int64)
  keep = weights > 0
  values, weights = values[keep], weights[keep]
  if not values.size:
    return []
  order = np.argsort(values, kind="stable")
  values = values[order]
  cumulative = np.cumsum(weights[order])
  targets = np.arange(1, num_buckets, dtype=np.int64) * cumulative[-1]
  positions = np.searchsorted(cumulative * num_buckets, targets, side="left")
  return [float(cut) for cut in np.unique(np.round(values[positions], 6))]


def statistic_boundaries(table: Mapping[Tuple[int, int], Tuple[int, int]],
                         prior_rate: float, num_buckets: int) -> Dict[str, List[float]]:
  """Quantile boundaries of exposures, clicks and click rate over the training rows.

  A pair with `n` rows and `c` clicks gives its `c` clicked rows the leave-one-out
  values (n - 1, c - 1) and its `n - c` other rows (n - 1, c). So the distribution
  over the training rows follows from the pair counts, and no row is stored.
  """
  exposure_values, exposure_weights = [], []
  click_values, rate_values, click_weights = [], [], []
  for rows, clicks in table.values():
    exposure_values.append(rows - 1)
    exposure_weights.append(rows)
    for own_click, weight in ((1, clicks), (0, rows - clicks)):
      click_values.append(clicks - own_click)
      rate_values.append(smoothed_rate(clicks - own_click, rows - 1, prior_rate))
      click_weights.append(weight)
  return {
      "exposures": weighted_quantile_boundaries(exposure_values, exposure_weights, num_buckets),
      "clicks": weighted_quantile_boundaries(click_values, click_weights, num_buckets),
      "click_rate": weighted_quantile_boundaries(rate_values, click_weights, num_buckets),
  }


# ---------------------------------------------------------------------------
# Feature config.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class Vocabularies:
  """Training vocabularies and bucket boundaries of every embedded feature."""

  values: Dict[str, List[Any]]
  boundaries: Dict[str, List[float]]


def build_vocabularies(counts: TrainingCounts, domains: DomainMap,
                       users: Mapping[int, Tuple[str, ...]],
                       videos: Mapping[int, VideoInfo],
                       options: PrepareOptions) -> Vocabularies:
  """Collect vocabularies and boundaries from the training rows only."""
  author_rows = collections.Counter()
  for video, rows in counts.video_rows.items():
    info = videos.get(video)
    if info is not None and info.author_id != UNKNOWN_AUTHOR:
      author_rows[info.author_id] += rows

  values = {
      "user_id": sorted(user for user, rows in counts.user_rows.items()
                        if rows >= options.min_id_rows),
      "video_id": sorted(video for video, rows in counts.video_rows.items()
                         if rows >= options.min_id_rows),
      "author_id": sorted(author for author, rows in author_rows.items()
                          if rows >= options.min_id_rows),
      "hour": sorted(counts.hours),
  }
  train_users = [users[user] for user in counts.user_rows if user in users]
  for position, name in enumerate(USER_FEATURES):
    values[name] = sorted({row[position] for row in train_users} - {""})
  train_videos = [videos[video] for video in counts.video_rows if video in videos]
  for position, name in enumerate(VIDEO_FEATURES):
    values[name] = sorted({info.categories[position] for info in train_videos} - {""})

  boundaries = {"video_duration": duration_boundaries(counts.video_rows, videos,
                                                      options.num_buckets)}

  prior_rate = counts.label_sums[0] / counts.rows
  for prefix, table in (("user_tab", counts.user_tab), ("video_tab", counts.video_tab)):
    cuts = statistic_boundaries(merge_by_domain(table, domains), prior_rate,
                                options.num_buckets)
    for statistic, statistic_cuts in cuts.items():
      boundaries[f"{prefix}_{statistic}"] = statistic_cuts
  return Vocabularies(values=values, boundaries=boundaries)


def duration_boundaries(video_rows: Mapping[int, int], videos: Mapping[int, VideoInfo],
                        num_buckets: int) -> List[float]:
  """Return the video_duration boundaries: quantiles over the rows counted per video.

  The boundary 0 gives unknown durations (-1) a bucket of their own.
  """
  durations, weights = [], []
  for video, rows in video_rows.items():
    info = videos.get(video)
    if info is not None and info.duration != UNKNOWN_DURATION:
      durations.append(info.duration)
      weights.append(rows)
  cuts = weighted_quantile_boundaries(durations, weights, num_buckets)
  return sorted({0.0, *cuts})


def build_feature_config(vocabularies: Vocabularies, domains: DomainMap
                         ) -> Tuple[features_lib.FeatureConfig, Dict[str, List[Any]]]:
  """Build and validate the feature config.

  Returns:
    `(config, vocabulary_files)`: the config, and the vocabularies it names by
    `vocabulary_file`, keyed by that relative path, still to be written.
  """
  vocabulary_files = {}

  def vocabulary_spec(name: str, group: str, dtype: str) -> Dict[str, Any]:
    values = vocabularies.values[name]
    if not values:
      raise InputError(
          f"Feature {name} has no known value in the training rows, so it has no "
          "vocabulary. Check the feature tables and the split dates.")
    spec = {"name": name, "group": group, "dtype": dtype, "num_oov_buckets": 1}
    if len(values) > INLINE_VOCABULARY_MAX:
      path = f"{VOCABULARY_DIR}/{name}.txt"
      vocabulary_files[path] = values
      spec["vocabulary_file"] = path
    else:
      spec["vocabulary"] = values
    return spec

  config = assemble_feature_config(vocabulary_spec, vocabularies.boundaries, domains)
  return config, vocabulary_files


def assemble_feature_config(vocabulary_spec, boundaries: Mapping[str, List[float]],
                            domains: DomainMap) -> features_lib.FeatureConfig:
  """Build and validate the config from the spec of each vocabulary feature.

  Args:
    vocabulary_spec: function of (name, group, dtype) that returns the JSON spec of
      a prior id, of a table column or of `hour`.
    boundaries: boundaries of video_duration and of every `DOMAIN_SIDE_FEATURES`.
    domains: the domain values and the fallback.
  """
  specs = [vocabulary_spec(name, "prior", "int64") for name in PRIOR_FEATURES]
  specs += [vocabulary_spec(name, "general", "string")
            for name in USER_FEATURES + VIDEO_FEATURES]
  specs.append({"name": "video_duration", "group": "general", "dtype": "float32",
                "boundaries": boundaries["video_duration"]})
  specs.append(vocabulary_spec("hour", "general", "int64"))
  for name in DOMAIN_SIDE_FEATURES:
    specs.append({"name": name, "group": "domain_side", "dtype": "float32",
                  "boundaries": boundaries[name]})
  specs.append({"name": DOMAIN_FEATURE, "group": "domain", "dtype": "int64"})
  specs += [{"name": task, "group": "label", "dtype": "int64"} for task in TASKS]

  return features_lib.from_dict({
      "name": DATASET_NAME,
      "format": "tfrecord",
      "embedding_dim": EMBEDDING_DIM,
      "domain": {"feature": DOMAIN_FEATURE, "values": list(domains.values),
                 "fallback": domains.fallback, "embed": True},
      "user_id_feature": "user_id",
      "features": specs,
  })


# ---------------------------------------------------------------------------
# Second pass: records.
# ---------------------------------------------------------------------------


class _ShardWriters:
  """Deals the records of one split round-robin to its shards, under temporary names."""

  def __init__(self, out_dir: str, split: str, num_rows: int, rows_per_shard: int):
    num_shards = max(1, -(-num_rows // rows_per_shard))
    self.names = [f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"
                  for index in range(num_shards)]
    self.temporary = [os.path.join(out_dir, name + ".tmp") for name in self.names]
    self.writers = [tf.io.TFRecordWriter(path) for path in self.temporary]
    self.rows = 0

  def write(self, record: bytes) -> None:
    self.writers[self.rows % len(self.writers)].write(record)
    self.rows += 1

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


@dataclasses.dataclass
class _UnknownIds:
  rows: int = 0
  ids: set = dataclasses.field(default_factory=set)

  def add(self, value: int) -> None:
    self.rows += 1
    self.ids.add(value)

  def to_json(self) -> Dict[str, Any]:
    return {"rows": self.rows, "distinct": len(self.ids), "examples": sorted(self.ids)[:10]}


class _SplitStats:
  """Rows and positives per domain of one split."""

  def __init__(self):
    self.rows = collections.Counter()
    self.positives = collections.defaultdict(lambda: [0] * len(TASKS))

  def add(self, domain: int, labels: Sequence[int]) -> None:
    self.rows[domain] += 1
    positives = self.positives[domain]
    for index, label in enumerate(labels):
      positives[index] += label

  def to_json(self, domain_values: Sequence[int]) -> Dict[str, Any]:
    def rates(rows: int, positives: Sequence[int]) -> Dict[str, Optional[float]]:
      return {task: (round(count / rows, 6) if rows else None)
              for task, count in zip(TASKS, positives)}

    total_rows = sum(self.rows.values())
    totals = [sum(self.positives[domain][index] for domain in self.rows)
              for index in range(len(TASKS))]
    return {
        "rows": total_rows,
        "positive_rate": rates(total_rows, totals),
        "domains": {str(domain): {"rows": self.rows[domain],
                                  "positive_rate": rates(self.rows[domain],
                                                         self.positives[domain])}
                    for domain in domain_values},
    }


class RecordEncoder:
  """Builds the serialized tf.train.Example of one log row."""

  def __init__(self, users: Mapping[int, Tuple[str, ...]], videos: Mapping[int, VideoInfo],
               domains: DomainMap, user_stats, video_stats, prior_rate: float):
    self.users = {user: tuple(value.encode("utf-8") for value in row)
                  for user, row in users.items()}
    self.videos = {video: (info.author_id, info.duration,
                           tuple(value.encode("utf-8") for value in info.categories))
                   for video, info in videos.items()}
    self.default_user = (b"",) * len(USER_FEATURES)
    self.default_video = (UNKNOWN_AUTHOR, UNKNOWN_DURATION, (b"",) * len(VIDEO_FEATURES))
    self.domains = domains
    self.user_stats = user_stats
    self.video_stats = video_stats
    self.prior_rate = prior_rate
    self.unknown_users = _UnknownIds()
    self.unknown_videos = _UnknownIds()

  def encode(self, row: LogRow, domain: int, is_train: bool,
             statistics: Optional[Tuple[float, ...]] = None) -> bytes:
    """Serialize `row` with its domain-side statistics.

    Args:
      row: the log row.
      domain: the row's domain value.
      is_train: whether the row is a training row, which leaves itself out of its
        statistics.
      statistics: the six `DOMAIN_SIDE_FEATURES` values; None computes them from the
        encoder's training statistics.
    """
    user_values = self.users.get(row.user_id)
    if user_values is None:
      self.unknown_users.add(row.user_id)
      user_values = self.default_user
    video_values = self.videos.get(row.video_id)
    if video_values is None:
      self.unknown_videos.add(row.video_id)
      video_values = self.default_video
    author, duration, video_categories = video_values
    click = row.labels[0]
    if statistics is None:
      statistics = (
          row_statistics(self.user_stats.get((row.user_id, domain)), click, is_train,
                         self.prior_rate)
          + row_statistics(self.video_stats.get((row.video_id, domain)), click, is_train,
                           self.prior_rate))

    example = tf.train.Example()
    feature = example.features.feature
    for name, value in (("user_id", row.user_id), ("video_id", row.video_id),
                        ("author_id", author), ("hour", row.hour), (DOMAIN_FEATURE, domain),
                        ("raw_tab", row.tab), ("date", row.date), ("time_ms", row.time_ms)):
      feature[name].int64_list.value.append(value)
    for name, value in zip(TASKS, row.labels):
      feature[name].int64_list.value.append(value)
    for name, value in zip(USER_FEATURES, user_values):
      feature[name].bytes_list.value.append(value)
    for name, value in zip(VIDEO_FEATURES, video_categories):
      feature[name].bytes_list.value.append(value)
    feature["video_duration"].float_list.value.append(duration)
    for name, value in zip(DOMAIN_SIDE_FEATURES, statistics):
      feature[name].float_list.value.append(value)
    return example.SerializeToString()


def write_records(sources: SourceFiles, options: PrepareOptions, out_dir: str,
                  split_rows: Mapping[str, int], encoder: RecordEncoder
                  ) -> Tuple[Dict[str, _ShardWriters], Dict[str, _SplitStats],
                             Dict[str, int]]:
  """Second pass: write every row to the shards of its split, under temporary names.

  Returns:
    `(writers, stats, dropped)`: the closed shard writers and the per-domain counts of
    each split, and per split the rows dropped because their tab is unknown and the
    config has no fallback.
  """
  output_splits = list(SPLITS) + (["test_random"] if sources.random_log else [])
  writers = {split: _ShardWriters(out_dir, split, split_rows.get(split, 0),
                                  options.rows_per_shard)
             for split in output_splits}
  stats = {split: _SplitStats() for split in output_splits}
  dropped = collections.Counter()

  def write(row: LogRow, split: str) -> None:
    domain = encoder.domains.domain_of(row.tab)
    if domain is None:
      dropped[split] += 1
      return
    writers[split].write(encoder.encode(row, domain, split == "train"))
    stats[split].add(domain, row.labels)

  try:
    splitter = make_splitter(options)
    for path in sources.standard_logs:
      for row in _logged_rows(path, "Writing"):
        write(row, splitter(row))
    if sources.random_log is not None:
      for row in _logged_rows(sources.random_log, "Writing"):
        if in_test_random(row, options):
          write(row, "test_random")
  finally:
    for writer in writers.values():
      writer.close()
  return writers, stats, dict(dropped)


# ---------------------------------------------------------------------------
# Stats, summary and the prepare command.
# ---------------------------------------------------------------------------


def format_summary(stats: Mapping[str, Any]) -> str:
  """Render `stats.json` content as a table of rows and positive rates per domain."""
  short = {"is_click": "click", "is_like": "like", "is_follow": "follow",
           "is_comment": "comment", "is_forward": "forward", "long_view": "long_view"}
  lines = [
      f"{stats['name']} ({stats['options']['split']} split): "
      + ", ".join(f"{name} {rows}" for name, rows in stats["rows"].items()) + " rows",
      f"{'split':<11} {'domain':>7} {'rows':>9}"
      + "".join(f" {short[task]:>9}" for task in TASKS),
  ]
  for name, split in stats["splits"].items():
    for label, value in [("all", split)] + list(split["domains"].items()):
      rates = "".join(
          f" {rate:9.4f}" if rate is not None else f" {'-':>9}"
          for rate in (value["positive_rate"][task] for task in TASKS))
      lines.append(f"{name:<11} {label:>7} {value['rows']:>9}{rates}")
  if stats["domains"]["merged_tabs"]:
    lines.append(f"Domain {OTHER_TAB} holds the merged tabs "
                 f"{stats['domains']['merged_tabs']}.")
  for column, unknown in stats["unknown_ids"].items():
    if unknown["rows"]:
      lines.append(f"{unknown['rows']} rows have one of {unknown['distinct']} {column} "
                   "values missing from the feature tables; they got default features.")
  for split, rows in stats["dropped_rows"].items():
    lines.append(f"{rows} {split} rows dropped: their tab is unseen in training and "
                 "the config has no fallback domain.")
  return "\n".join(lines)


def prepare(src: str, out_dir: str, **options: Any) -> Dict[str, Any]:
  """Convert the KuaiRand-Pure logs under `src` into TFRecords and a config in `out_dir`.

  Args:
    src: directory with the source CSV files, searched recursively.
    out_dir: output directory.
    **options: fields of `PrepareOptions`. With `split="passes"`, the other options
      are fields of `PassOptions` and `prepare_passes` does the work.

  Returns:
    The content of `stats.json`.

  Raises:
    FileNotFoundError: a source file is missing; the message names it.
    InputError: a source file is malformed; the message names the file, the line
      or the column.
    ValueError: an option is invalid.
  """
  if options.get("split") == PASS_SPLIT:
    pass_options = {name: value for name, value in options.items() if name != "split"}
    return prepare_passes(src, out_dir, **pass_options)
  settings = PrepareOptions(**options)
  settings.validate()
  start = time.time()
  sources = find_sources(src, settings.test_random)
  users = read_user_table(sources.user_table)
  videos = read_video_table(sources.video_table)
  logging.info("Read %d users from %s and %d videos from %s", len(users),
               sources.user_table, len(videos), sources.video_table)

  counts, split_rows, split_tabs = count_rows(sources, settings)
  if counts.rows == 0:
    raise InputError(
        f"No log row falls in the training split (split={settings.split}, "
        f"train_end_date={settings.train_end_date}). Check the logs and the dates.")
  domains = build_domain_map(counts.tab_rows, settings.min_tab_rows, settings.fallback_tab)
  vocabularies = build_vocabularies(counts, domains, users, videos, settings)
  config, vocabulary_files = build_feature_config(vocabularies, domains)

  prior_rate = counts.label_sums[0] / counts.rows
  encoder = RecordEncoder(users, videos, domains,
                          merge_by_domain(counts.user_tab, domains),
                          merge_by_domain(counts.video_tab, domains), prior_rate)
  os.makedirs(out_dir, exist_ok=True)
  writers, split_stats, dropped = write_records(sources, settings, out_dir, split_rows, encoder)

  seconds = time.time() - start
  stats = {
      "name": DATASET_NAME,
      "sources": dataclasses.asdict(sources),
      "options": dataclasses.asdict(settings),
      "domains": {
          "values": domains.values,
          "merged_tabs": domains.merged_tabs,
          "fallback": domains.fallback,
          "tab_training_rows": {str(tab): rows for tab, rows in sorted(counts.tab_rows.items())},
          "tabs_seen": {split: sorted(tabs) for split, tabs in sorted(split_tabs.items())},
      },
      "prior_rate": {task: round(total / counts.rows, 6)
                     for task, total in zip(TASKS, counts.label_sums)},
      "smoothing_k": SMOOTHING_K,
      "rows": {split: writer.rows for split, writer in writers.items()},
      "shards": {split: writer.names for split, writer in writers.items()},
      "splits": {split: value.to_json(domains.values) for split, value in split_stats.items()},
      "unknown_ids": {"user_id": encoder.unknown_users.to_json(),
                      "video_id": encoder.unknown_videos.to_json()},
      "dropped_rows": dropped,
      "seconds": round(seconds, 1),
  }
  _publish(out_dir, writers, config, vocabulary_files, stats)

  for column, unknown in stats["unknown_ids"].items():
    if unknown["rows"]:
      logging.warning("%d rows have one of %d %s values missing from the feature tables "
                      "(e.g. %s); they got default feature values.", unknown["rows"],
                      unknown["distinct"], column, unknown["examples"][:5])
  logging.info("Wrote %s in %.1f s", out_dir, seconds)
  return stats


def _publish(out_dir: str, writers: Mapping[str, _ShardWriters],
             config: features_lib.FeatureConfig, vocabulary_files: Mapping[str, List[Any]],
             stats: Mapping[str, Any]) -> None:
  """Move the outputs from temporary to final names; the config and stats.json last.

  Shards of an earlier run under other names (another shard count) are deleted, so
  `<split>-*.tfrecord` matches this run's shards only.
  """
  staged = []
  for relative, values in vocabulary_files.items():
    path = os.path.join(out_dir, relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
      handle.writelines(f"{value}\n" for value in values)
    staged.append(path)
  for writer in writers.values():
    staged += [path[:-len(".tmp")] for path in writer.temporary]
  for path in staged:
    os.replace(path + ".tmp", path)

  current = {name for writer in writers.values() for name in writer.names}
  _delete_stale_shards(out_dir, current)

  config_path = os.path.join(out_dir, "feature_config.json")
  config.save(config_path + ".tmp")
  stats_path = os.path.join(out_dir, "stats.json")
  with open(stats_path + ".tmp", "w", encoding="utf-8") as handle:
    json.dump(stats, handle, indent=2)
    handle.write("\n")
  os.replace(config_path + ".tmp", config_path)
  os.replace(stats_path + ".tmp", stats_path)


def _delete_stale_shards(directory: str, current: set) -> None:
  """Delete the shards in `directory` whose names are not in `current`."""
  for split in list(SPLITS) + ["test_random"]:
    for path in glob.glob(os.path.join(directory, f"{split}-*-of-*.tfrecord")):
      if os.path.basename(path) not in current:
        logging.info("Deleting %s, a shard of an earlier run", path)
        os.remove(path)


# ---------------------------------------------------------------------------
# Daily passes (`prepare --split=passes`).
# ---------------------------------------------------------------------------

PASS_SPLIT = "passes"
PASSES_FILE = "passes.json"
DEFAULT_PASS_DAYS = 1
DEFAULT_VALID_FRACTION = 0.1
# The trainer admits the prior ids from training counts: an id seen at least
# PRIOR_MIN_FREQUENCY times gets its own embedding row, and the other ids share
# PRIOR_OOV_BUCKETS hashed buckets.
PRIOR_MIN_FREQUENCY = 2
PRIOR_OOV_BUCKETS = 8
# Table columns and hour are admitted from training counts too, every value seen once.
GENERAL_MIN_FREQUENCY = 1
# Bucket boundaries of the exposure and click counts of every pass: one bucket for 0,
# then one per power of two (1, 2-3, 4-7, ...), the last from 2**20 up.
COUNT_BOUNDARIES = tuple(float(2 ** power) for power in range(21))


@dataclasses.dataclass
class PassOptions:
  """Options of the pass layout, documented by the flags of the same names."""

  seed: int = DEFAULT_SEED
  pass_days: int = DEFAULT_PASS_DAYS
  valid_fraction: float = DEFAULT_VALID_FRACTION
  min_tab_rows: int = 0
  fallback_tab: str = "auto"
  test_random: bool = True
  num_buckets: int = DEFAULT_NUM_BUCKETS
  rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
  prior_min_frequency: int = PRIOR_MIN_FREQUENCY
  prior_oov_buckets: int = PRIOR_OOV_BUCKETS

  def validate(self) -> None:
    integers = {"pass_days": 1, "num_buckets": 2, "rows_per_shard": 1, "min_tab_rows": 0,
                "prior_min_frequency": 1, "prior_oov_buckets": 1}
    for name, minimum in integers.items():
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}. Received: {value!r}")
    if not 0.0 <= self.valid_fraction < 1.0:
      raise ValueError(
          f"valid_fraction must be in [0, 1). Received: {self.valid_fraction!r}")
    parse_fallback_tab(self.fallback_tab)


def calendar_date(value: int) -> datetime.date:
  """Return the date of a YYYYMMDD integer. Raises ValueError for an invalid date."""
  return datetime.date(value // 10000, value // 100 % 100, value % 100)


@dataclasses.dataclass
class PassCounts:
  """Counts of the first read of the pass layout, keyed by the log's `date` value.

  Attributes:
    rows: date -> standard-log rows per seeded split ("train" or "valid").
    random_rows: date -> random-log rows.
    train_clicks: date -> clicked training rows.
    tab_rows: date -> training rows per raw tab.
    user_tab: (date, user_id, raw tab) -> [training rows, clicked training rows].
    video_tab: (date, video_id, raw tab) -> [training rows, clicked training rows].
  """

  rows: Dict[int, collections.Counter] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(collections.Counter))
  random_rows: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  train_clicks: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  tab_rows: Dict[int, collections.Counter] = dataclasses.field(
      default_factory=lambda: collections.defaultdict(collections.Counter))
  user_tab: Dict[Tuple[int, int, int], List[int]] = dataclasses.field(default_factory=dict)
  video_tab: Dict[Tuple[int, int, int], List[int]] = dataclasses.field(default_factory=dict)

  def add_training_row(self, row: LogRow) -> None:
    click = row.labels[0]
    self.train_clicks[row.date] += click
    self.tab_rows[row.date][row.tab] += 1
    for table, key in ((self.user_tab, (row.date, row.user_id, row.tab)),
                       (self.video_tab, (row.date, row.video_id, row.tab))):
      counts = table.get(key)
      if counts is None:
        table[key] = [1, click]
      else:
        counts[0] += 1
        counts[1] += click


def make_valid_splitter(options: PassOptions) -> RandomSplitter:
  """Return the seeded train/valid draw of the standard-log rows, in file order.

  Row i is "valid" when the i-th uniform draw of `numpy.random.default_rng(seed)` is
  below `valid_fraction`, else "train". Every standard-log row takes one draw, also
  the rows of the last period, which are test rows only.
  """
  return RandomSplitter(options.seed, (options.valid_fraction, 1.0 - options.valid_fraction),
                        ("valid", "train"))


def _checked_rows(path: str, activity: str, seen_dates: set) -> Iterator[LogRow]:
  """Yield the rows of a log, checking that every date is a calendar date."""
  for row in _logged_rows(path, activity):
    if row.date not in seen_dates:
      try:
        calendar_date(row.date)
      except ValueError:
        raise InputError(
            f"{path}, line {row.line}: date {row.date} is not a calendar date.") from None
      seen_dates.add(row.date)
    yield row


def count_pass_rows(sources: SourceFiles, options: PassOptions) -> PassCounts:
  """First read: rows per date and split, and the training counts per date.

  Every row of every log is parsed, so malformed input fails before anything is
  written.
  """
  counts = PassCounts()
  seen_dates = set()
  splitter = make_valid_splitter(options)
  for path in sources.standard_logs:
    for row in _checked_rows(path, "Counting", seen_dates):
      split = splitter(row)
      counts.rows[row.date][split] += 1
      if split == "train":
        counts.add_training_row(row)
  if sources.random_log is not None:
    for row in _checked_rows(sources.random_log, "Counting", seen_dates):
      counts.random_rows[row.date] += 1
  return counts


@dataclasses.dataclass
class PassPlan:
  """The periods of the logs and the pass that trains or tests on each.

  Period k contains the dates [first_date + k * pass_days, first_date + (k + 1) *
  pass_days). A period without standard-log rows is merged into the next period
  with rows, so the windows of the periods with rows cover the dates without gaps.
  Pass i trains on the i-th period with rows and tests on the next one, so the last
  period with rows is a test set only.

  Attributes:
    first_date: the earliest date of the standard logs.
    pass_days: days per period.
    periods: the periods with standard-log rows, ascending.
  """

  first_date: datetime.date
  pass_days: int
  periods: List[int]

  def __post_init__(self):
    self.train_periods = self.periods[:-1]
    self.test_periods = self.periods[1:]
    self.pass_of_train_period = {period: index
                                 for index, period in enumerate(self.train_periods)}
    self.pass_of_test_period = {period: index
                                for index, period in enumerate(self.test_periods)}
    self._periods: Dict[int, int] = {}

  @staticmethod
  def name(index: int) -> str:
    return f"pass_{index + 1:03d}"

  def period_of(self, date: int) -> int:
    """Return the period of a YYYYMMDD date, negative before the first date."""
    period = self._periods.get(date)
    if period is None:
      period = (calendar_date(date) - self.first_date).days // self.pass_days
      self._periods[date] = period
    return period

  def merged_period(self, date: int) -> Optional[int]:
    """Return the period with rows that a date's period is merged into, or None.

    None stands for a date before the first date or after the last period with rows.
    """
    period = self.period_of(date)
    index = bisect.bisect_left(self.periods, period)
    if period < 0 or index == len(self.periods):
      return None
    return self.periods[index]

  def date_range(self, period: int) -> Tuple[str, str]:
    """Return the first date and the exclusive end date of a period with rows.

    The range starts after the previous period with rows, so it includes the empty
    periods merged into this one. The dates are YYYY-MM-DD strings.
    """
    index = self.periods.index(period)
    first_period = self.periods[index - 1] + 1 if index else period
    start = self.first_date + datetime.timedelta(days=first_period * self.pass_days)
    end = self.first_date + datetime.timedelta(days=(period + 1) * self.pass_days)
    return start.isoformat(), end.isoformat()


def plan_passes(counts: PassCounts, pass_days: int) -> PassPlan:
  """Number the periods from the earliest standard-log date and pair them into passes.

  A period without standard-log rows is merged into the next period with rows, so it
  gets no pass of its own.

  Raises:
    InputError: the standard logs cover fewer than two periods.
  """
  if not counts.rows:
    raise InputError("The standard logs have no rows.")
  dates = sorted(counts.rows)
  first_date = calendar_date(dates[0])
  plan = PassPlan(first_date, pass_days, [])
  periods = sorted({plan.period_of(date) for date in dates})
  if len(periods) < 2:
    raise InputError(
        f"The standard logs cover one period of {pass_days} days ({dates[0]} to "
        f"{dates[-1]}), so no pass has a test period. Lower --pass_days.")
  return PassPlan(first_date, pass_days, periods)


def build_pass_domain_map(tab_rows: Mapping[int, int], min_tab_rows: int,
                          fallback_tab: str) -> DomainMap:
  """Choose the domains of every pass from the training rows of the first pass.

  The model's domain heads are fixed, so every pass has the same domains: the tabs
  with at least `min_tab_rows` training rows in the first pass, then always
  `OTHER_TAB`. `OTHER_TAB` contains the tabs merged in the first pass and, through the
  fallback, the tabs that first appear later.

  Args:
    tab_rows: training rows per raw tab in the first pass.
    min_tab_rows: tabs with fewer first-pass training rows are merged.
    fallback_tab: "auto" or "other" (`OTHER_TAB`), "none" (rows of a tab that is
      unknown to the first pass are dropped and counted), or a domain value.

  Raises:
    ValueError: as `build_domain_map`, or the fallback is not a domain value.
  """
  first = build_domain_map(tab_rows, min_tab_rows, "auto")
  values = list(first.values)
  if OTHER_TAB not in values:
    values.append(OTHER_TAB)
  choice = parse_fallback_tab(fallback_tab)
  if choice in ("auto", "other"):
    fallback = OTHER_TAB
  elif choice == "none":
    fallback = None
  elif choice in values:
    fallback = choice
  else:
    raise ValueError(f"fallback_tab {choice} is not a domain value. Domains: {values}")
  return DomainMap(values=values, merged_tabs=first.merged_tabs, fallback=fallback)


class CumulativeCounts:
  """Training rows and clicks of each (id, domain) pair, summed over periods <= k."""

  def __init__(self, table: Mapping[Tuple[int, int, int], List[int]], plan: PassPlan,
               domains: DomainMap):
    """Sum `table`, (date, id, raw tab) -> [rows, clicks], per pair and period."""
    per_pair = collections.defaultdict(dict)
    for (date, key, tab), (rows, clicks) in table.items():
      domain = domains.domain_of(tab)
      if domain is None:
        continue
      totals = per_pair[(key, domain)].setdefault(plan.period_of(date), [0, 0])
      totals[0] += rows
      totals[1] += clicks
    # (id, domain) -> (periods ascending, rows up to each, clicks up to each)
    self._pairs: Dict[Tuple[int, int], Tuple[List[int], List[int], List[int]]] = {}
    for pair, totals in per_pair.items():
      periods = sorted(totals)
      rows = list(itertools.accumulate(totals[period][0] for period in periods))
      clicks = list(itertools.accumulate(totals[period][1] for period in periods))
      self._pairs[pair] = (periods, rows, clicks)

  def get(self, pair: Tuple[int, int], period: int) -> Optional[Tuple[int, int]]:
    """Return (rows, clicks) of `pair` over the periods <= `period`, or None."""
    entry = self._pairs.get(pair)
    if entry is None:
      return None
    periods, rows, clicks = entry
    index = bisect.bisect_right(periods, period) - 1
    if index < 0:
      return None
    return rows[index], clicks[index]


def cumulative_click_rates(counts: PassCounts, plan: PassPlan) -> Dict[int, float]:
  """Return the click rate of the training rows up to each training period."""
  rows_by_period = collections.Counter()
  clicks_by_period = collections.Counter()
  for date, split_rows in counts.rows.items():
    period = plan.period_of(date)
    rows_by_period[period] += split_rows["train"]
    clicks_by_period[period] += counts.train_clicks[date]
  rates = {}
  rows = clicks = 0
  for period in plan.train_periods:
    rows += rows_by_period[period]
    clicks += clicks_by_period[period]
    rates[period] = clicks / rows
  return rates


def build_pass_feature_config(counts: PassCounts, plan: PassPlan, domains: DomainMap,
                              videos: Mapping[int, VideoInfo],
                              options: PassOptions) -> features_lib.FeatureConfig:
  """Build the one feature config of every pass.

  Vocabulary features carry no vocabulary: the trainer admits it from the training
  counts of each pass (`min_frequency`). Bucketized features keep the same
  boundaries in every pass, because a warm start keeps each table's size:

  - exposures and clicks: `COUNT_BOUNDARIES`, one bucket per power of two. The
    cumulative counts grow with every pass, so quantiles of the first pass would push
    the counts of later passes into the top bucket, while a log scale keeps the same
    relative resolution at every size and needs no data.
  - click rate: `num_buckets` equal-width buckets of [0, 1]. The smoothed rate lies
    in [0, 1] in every pass. It sits near the prior while a pair has few exposures,
    so first-pass quantiles would crowd around the prior and leave the wider spread
    of later passes in the outer buckets.
  - video_duration: quantiles of the first pass's training rows, as in the other
    splits. It is a property of the video, not a count, so its distribution over the
    rows does not drift as passes accumulate, and no later row is read.
  """
  first_period = plan.train_periods[0]
  video_rows = collections.Counter()
  for (date, video, _), (rows, _) in counts.video_tab.items():
    if plan.period_of(date) == first_period:
      video_rows[video] += rows
  rate_cuts = [round(index / options.num_buckets, 6) for index in range(1, options.num_buckets)]
  boundaries = {"video_duration": duration_boundaries(video_rows, videos, options.num_buckets)}
  for prefix in ("user_tab", "video_tab"):
    boundaries[f"{prefix}_exposures"] = list(COUNT_BOUNDARIES)
    boundaries[f"{prefix}_clicks"] = list(COUNT_BOUNDARIES)
    boundaries[f"{prefix}_click_rate"] = rate_cuts

  def admitted_spec(name: str, group: str, dtype: str) -> Dict[str, Any]:
    spec = {"name": name, "group": group, "dtype": dtype}
    if group == "prior":
      spec["min_frequency"] = options.prior_min_frequency
      spec["num_oov_buckets"] = options.prior_oov_buckets
    else:
      spec["min_frequency"] = GENERAL_MIN_FREQUENCY
    # Placeholders of a missing value stay in the OOV buckets, as in the other splits.
    if dtype == "string":
      spec["unknown_values"] = [""]
    elif name == "author_id":
      spec["unknown_values"] = [UNKNOWN_AUTHOR]
    return spec

  return assemble_feature_config(admitted_spec, boundaries, domains)


def _pass_split_rows(counts: PassCounts, plan: PassPlan, test_random: bool
                     ) -> List[Dict[str, int]]:
  """Count the rows of each split of each pass, before rows of unknown tabs drop."""
  per_pass = [collections.Counter() for _ in plan.train_periods]
  for date, split_rows in counts.rows.items():
    period = plan.period_of(date)
    train_pass = plan.pass_of_train_period.get(period)
    if train_pass is not None:
      per_pass[train_pass].update(split_rows)
    test_pass = plan.pass_of_test_period.get(period)
    if test_pass is not None:
      per_pass[test_pass]["test"] += sum(split_rows.values())
  if test_random:
    for date, rows in counts.random_rows.items():
      test_pass = plan.pass_of_test_period.get(plan.merged_period(date))
      if test_pass is not None:
        per_pass[test_pass]["test_random"] += rows
  return [dict(rows) for rows in per_pass]


@dataclasses.dataclass
class _PassOutputs:
  """Shard writers, per-domain counts and dropped rows of every pass and split."""

  writers: List[Dict[str, _ShardWriters]]
  stats: List[Dict[str, _SplitStats]]
  dropped: List[collections.Counter]
  random_rows_outside_tests: int = 0


def write_pass_records(sources: SourceFiles, options: PassOptions, out_dir: str,
                       plan: PassPlan, split_rows: Sequence[Mapping[str, int]],
                       encoder: RecordEncoder, user_counts: CumulativeCounts,
                       video_counts: CumulativeCounts,
                       click_rates: Mapping[int, float]) -> _PassOutputs:
  """Second read: write every row to the passes that train or test on it.

  A standard-log row of period k goes to the train or valid split of the pass that
  trains on period k and to the test split of the pass before it. A random-log row
  goes to `test_random` of the pass whose test period contains it. Every record gets the
  statistics of the training rows of the periods up to its pass's training period,
  and a training row leaves itself out of them.
  """
  outputs = _PassOutputs(writers=[], stats=[], dropped=[])
  for index, rows in enumerate(split_rows):
    pass_dir = os.path.join(out_dir, plan.name(index))
    os.makedirs(pass_dir, exist_ok=True)
    splits = list(SPLITS) + (["test_random"] if rows.get("test_random") else [])
    outputs.writers.append({split: _ShardWriters(pass_dir, split, rows.get(split, 0),
                                                 options.rows_per_shard)
                            for split in splits})
    outputs.stats.append({split: _SplitStats() for split in splits})
    outputs.dropped.append(collections.Counter())

  def write(row: LogRow, pass_index: int, split: str) -> None:
    domain = encoder.domains.domain_of(row.tab)
    if domain is None:
      outputs.dropped[pass_index][split] += 1
      return
    period = plan.train_periods[pass_index]
    is_train = split == "train"
    click = row.labels[0]
    statistics = (
        row_statistics(user_counts.get((row.user_id, domain), period), click, is_train,
                       click_rates[period])
        + row_statistics(video_counts.get((row.video_id, domain), period), click,
                         is_train, click_rates[period]))
    outputs.writers[pass_index][split].write(
        encoder.encode(row, domain, is_train, statistics))
    outputs.stats[pass_index][split].add(domain, row.labels)

  try:
    splitter = make_valid_splitter(options)
    for path in sources.standard_logs:
      for row in _logged_rows(path, "Writing"):
        split = splitter(row)
        period = plan.period_of(row.date)
        train_pass = plan.pass_of_train_period.get(period)
        if train_pass is not None:
          write(row, train_pass, split)
        test_pass = plan.pass_of_test_period.get(period)
        if test_pass is not None:
          write(row, test_pass, "test")
    if sources.random_log is not None:
      for row in _logged_rows(sources.random_log, "Writing"):
        test_pass = plan.pass_of_test_period.get(plan.merged_period(row.date))
        if test_pass is None:
          outputs.random_rows_outside_tests += 1
        else:
          write(row, test_pass, "test_random")
  finally:
    for writers in outputs.writers:
      for writer in writers.values():
        writer.close()
  return outputs


def prepare_passes(src: str, out_dir: str, **options: Any) -> Dict[str, Any]:
  """Convert the KuaiRand-Pure logs under `src` into daily passes in `out_dir`.

  Args:
    src: directory with the source CSV files, searched recursively.
    out_dir: output directory.
    **options: fields of `PassOptions`.

  Returns:
    The content of `stats.json`.

  Raises:
    FileNotFoundError: a source file is missing; the message names it.
    InputError: a source file is malformed, or the logs cover fewer than two periods
      or leave the first pass without training rows.
    ValueError: an option is invalid.
  """
  settings = PassOptions(**options)
  settings.validate()
  start = time.time()
  sources = find_sources(src, settings.test_random)
  users = read_user_table(sources.user_table)
  videos = read_video_table(sources.video_table)
  logging.info("Read %d users from %s and %d videos from %s", len(users),
               sources.user_table, len(videos), sources.video_table)

  counts = count_pass_rows(sources, settings)
  plan = plan_passes(counts, settings.pass_days)
  first_tab_rows = collections.Counter()
  for date, tab_rows in counts.tab_rows.items():
    if plan.period_of(date) == plan.train_periods[0]:
      first_tab_rows.update(tab_rows)
  if not first_tab_rows:
    raise InputError(
        f"The first pass ({' to '.join(plan.date_range(plan.train_periods[0]))}, end "
        f"excluded) has no training row, so it cannot choose the domains. Lower "
        f"--valid_fraction or raise --pass_days.")
  domains = build_pass_domain_map(first_tab_rows, settings.min_tab_rows,
                                  settings.fallback_tab)
  config = build_pass_feature_config(counts, plan, domains, videos, settings)
  click_rates = cumulative_click_rates(counts, plan)
  user_counts = CumulativeCounts(counts.user_tab, plan, domains)
  video_counts = CumulativeCounts(counts.video_tab, plan, domains)
  split_rows = _pass_split_rows(counts, plan, sources.random_log is not None)
  del counts  # the per-date tables are no longer needed

  encoder = RecordEncoder(users, videos, domains, {}, {}, 0.0)
  os.makedirs(out_dir, exist_ok=True)
  outputs = write_pass_records(sources, settings, out_dir, plan, split_rows, encoder,
                               user_counts, video_counts, click_rates)

  passes = []
  for index, (train_period, test_period) in enumerate(zip(plan.train_periods,
                                                          plan.test_periods)):
    train_start, train_end = plan.date_range(train_period)
    test_start, test_end = plan.date_range(test_period)
    writers = outputs.writers[index]
    passes.append({
        "name": plan.name(index),
        "start": train_start,
        "end": train_end,
        "test_start": test_start,
        "test_end": test_end,
        "train_click_rate_cumulative": round(click_rates[train_period], 6),
        "rows": {split: writer.rows for split, writer in writers.items()},
        "shards": {split: writer.names for split, writer in writers.items()},
        "splits": {split: value.to_json(domains.values)
                   for split, value in outputs.stats[index].items()},
        "dropped_rows": dict(outputs.dropped[index]),
    })
  seconds = time.time() - start
  stats = {
      "name": DATASET_NAME,
      "layout": PASS_SPLIT,
      "sources": dataclasses.asdict(sources),
      "options": dataclasses.asdict(settings),
      "first_date": plan.first_date.isoformat(),
      "domains": {
          "values": domains.values,
          "merged_tabs": domains.merged_tabs,
          "fallback": domains.fallback,
          "first_pass_tab_training_rows": {str(tab): rows
                                           for tab, rows in sorted(first_tab_rows.items())},
      },
      "smoothing_k": SMOOTHING_K,
      "passes": passes,
      "random_rows_outside_test_periods": outputs.random_rows_outside_tests,
      "unknown_ids_in_records": {"user_id": encoder.unknown_users.to_json(),
                                 "video_id": encoder.unknown_videos.to_json()},
      "seconds": round(seconds, 1),
  }
  manifest = {
      "dataset": DATASET_NAME,
      "pass_days": settings.pass_days,
      "seed": settings.seed,
      "passes": [{key: entry[key] for key in ("name", "start", "end", "test_start",
                                              "test_end")}
                 | {f"{split}_rows": entry["rows"][split] for split in SPLITS}
                 for entry in passes],
  }
  _publish_passes(out_dir, outputs.writers, config, stats, manifest)
  logging.info("Wrote %d passes to %s in %.1f s", len(passes), out_dir, seconds)
  return stats


def _publish_passes(out_dir: str, pass_writers: Sequence[Mapping[str, _ShardWriters]],
                    config: features_lib.FeatureConfig, stats: Mapping[str, Any],
                    manifest: Mapping[str, Any]) -> None:
  """Move the shards to their final names, then write the config, stats and passes.json.

  passes.json comes last, so a reader that finds it finds every file it lists. Shards
  of an earlier run under other names are deleted, in the pass folders of this run
  and in `pass_*` folders that this run no longer has.
  """
  names = [PassPlan.name(index) for index in range(len(pass_writers))]
  for writers in pass_writers:
    for writer in writers.values():
      for path in writer.temporary:
        os.replace(path, path[:-len(".tmp")])
  for name, writers in zip(names, pass_writers):
    current = {shard for writer in writers.values() for shard in writer.names}
    _delete_stale_shards(os.path.join(out_dir, name), current)
  for path in sorted(glob.glob(os.path.join(out_dir, "pass_*"))):
    if os.path.isdir(path) and os.path.basename(path) not in names:
      _delete_stale_shards(path, set())
      try:
        os.rmdir(path)
      except OSError as error:
        logging.warning("%s is a pass folder of an earlier run and keeps files that are "
                        "not shards, so it was not deleted: %s", path, error)

  outputs = [(os.path.join(out_dir, "feature_config.json"), config.to_dict()),
             (os.path.join(out_dir, "stats.json"), stats),
             (os.path.join(out_dir, PASSES_FILE), manifest)]
  for path, content in outputs:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
      json.dump(content, handle, indent=2)
      handle.write("\n")
  for path, _ in outputs:
    os.replace(path + ".tmp", path)


def format_pass_summary(stats: Mapping[str, Any]) -> str:
  """Render the `stats.json` of the pass layout as one line per pass."""
  domains = stats["domains"]
  lines = [
      f"{stats['name']} ({stats['options']['pass_days']}-day passes from "
      f"{stats['first_date']}): {len(stats['passes'])} passes, domains "
      f"{domains['values']}, fallback {domains['fallback']}",
      f"{'pass':<9} {'start':<10} {'end':<10} {'train':>8} {'valid':>8} {'test':>8} "
      f"{'test_rand':>9} {'click':>7}",
  ]
  for entry in stats["passes"]:
    rows = entry["rows"]
    lines.append(
        f"{entry['name']:<9} {entry['start']:<10} {entry['end']:<10} {rows['train']:>8} "
        f"{rows['valid']:>8} {rows['test']:>8} {rows.get('test_random', 0):>9} "
        f"{entry['train_click_rate_cumulative']:>7.4f}")
  lines.append("end is excluded; click is the click rate of the training rows of "
               "this pass and the passes before it.")
  if domains["merged_tabs"]:
    lines.append(f"Domain {OTHER_TAB} holds the merged tabs {domains['merged_tabs']} "
                 "and tabs unseen in the first pass's training rows.")
  for entry in stats["passes"]:
    for split, rows in entry["dropped_rows"].items():
      lines.append(f"{entry['name']}: {rows} {split} rows dropped: their tab is unknown "
                   "to the first pass and the config has no fallback domain.")
  return "\n".join(lines)


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

COMMANDS = ("download", "prepare")
_DOWNLOAD_FLAGS = ("dest", "url", "checksum", "expected_size", "retries", "extract")
_PASS_ONLY_FLAGS = ("pass_days", "valid_fraction", "prior_min_frequency",
                    "prior_oov_buckets")
_NOT_PASS_FLAGS = ("train_end_date", "valid_end_date", "min_id_rows")
_PREPARE_FLAGS = ("src", "out", "split", "seed", "min_tab_rows", "fallback_tab",
                  "test_random", "num_buckets", "rows_per_shard") + _NOT_PASS_FLAGS + \
    _PASS_ONLY_FLAGS


def _define_flags() -> None:
  data_dir_help = "the data dir is $PEPNET_TF_DATA_DIR or ~/.cache/pepnet_tf"
  flags.DEFINE_string(
      "dest", None,
      f"download: directory for the archive and its extracted files. Default: "
      f"<data dir>/kuairand, where {data_dir_help}.")
  flags.DEFINE_string("url", DEFAULT_URL, "download: address of the KuaiRand-Pure archive.")
  flags.DEFINE_string(
      "checksum", None,
      "download: expected digest of the archive, 'sha256:<hex>' or 'md5:<hex>'. "
      "Unchecked when unset.")
  flags.DEFINE_integer("expected_size", None,
                       "download: expected archive size in bytes. Unchecked when unset.")
  flags.DEFINE_integer("retries", 3,
                       "download: further attempts after a lost connection, each resuming.")
  flags.DEFINE_bool("extract", True, "download: extract the archive after downloading.")
  flags.DEFINE_string(
      "src", None,
      "prepare: directory with the KuaiRand-Pure CSV files, searched recursively. "
      f"Default: <data dir>/kuairand, where {data_dir_help}.")
  flags.DEFINE_string(
      "out", None,
      f"prepare: output directory. Default: <data dir>/{DATASET_NAME}.")
  flags.DEFINE_enum(
      "split", "date", list(SPLIT_METHODS) + [PASS_SPLIT],
      "prepare: 'date' splits by --train_end_date and --valid_end_date; 'random' "
      "assigns rows 8:1:1 at random with --seed; 'passes' writes one folder per "
      "period of --pass_days days, for training in daily passes.")
  flags.DEFINE_integer(
      "seed", DEFAULT_SEED,
      "prepare: seed of the random split, and of the validation rows of each pass.")
  flags.DEFINE_integer("train_end_date", DEFAULT_TRAIN_END_DATE,
                       "prepare: last date (YYYYMMDD) of the training split (date split).")
  flags.DEFINE_integer("valid_end_date", DEFAULT_VALID_END_DATE,
                       "prepare: last date (YYYYMMDD) of the validation split (date split).")
  flags.DEFINE_integer(
      "min_tab_rows", 0,
      f"prepare: tabs with fewer training rows are merged into domain {OTHER_TAB} "
      "('other'). 0 keeps every tab.")
  flags.DEFINE_string(
      "fallback_tab", "auto",
      "prepare: domain that serving uses for a tab unseen in training: 'auto' (the "
      "'other' domain if some tabs were merged, else none), 'none' (reject the "
      "request), 'other', or a tab id.")
  flags.DEFINE_bool("test_random", True,
                    "prepare: write the random-exposure log as the test_random split.")
  flags.DEFINE_integer("num_buckets", DEFAULT_NUM_BUCKETS,
                       "prepare: quantile buckets of each bucketized numeric feature.")
  flags.DEFINE_integer("rows_per_shard", DEFAULT_ROWS_PER_SHARD,
                       "prepare: maximum rows of one TFRecord shard.")
  flags.DEFINE_integer(
      "min_id_rows", 1,
      "prepare: ids (user, video, author) with fewer training rows map to the "
      "out-of-vocabulary bucket.")
  flags.DEFINE_integer(
      "pass_days", DEFAULT_PASS_DAYS,
      "prepare --split=passes: days per period; pass k trains on period k and tests "
      "on the next period with rows.")
  flags.DEFINE_float(
      "valid_fraction", DEFAULT_VALID_FRACTION,
      "prepare --split=passes: fraction of each training period drawn at random, "
      "with --seed, as the pass's validation rows. In [0, 1).")
  flags.DEFINE_integer(
      "prior_min_frequency", PRIOR_MIN_FREQUENCY,
      "prepare --split=passes: min_frequency of user_id, video_id and author_id: the "
      "trainer admits an id seen at least this many times in the training counts.")
  flags.DEFINE_integer(
      "prior_oov_buckets", PRIOR_OOV_BUCKETS,
      "prepare --split=passes: hashed buckets shared by the ids that are not admitted.")


def _check_flags_of(command: str) -> None:
  """Reject flags that belong to the other command or to another split."""
  foreign = _PREPARE_FLAGS if command == "download" else _DOWNLOAD_FLAGS
  misplaced = [name for name in foreign if flags.FLAGS[name].present]
  if misplaced:
    other = "prepare" if command == "download" else "download"
    raise app.UsageError(
        f"These flags apply only to {other}, not to {command}: "
        f"{', '.join('--' + name for name in misplaced)}")
  if command != "prepare":
    return
  passes = flags.FLAGS.split == PASS_SPLIT
  foreign = _NOT_PASS_FLAGS if passes else _PASS_ONLY_FLAGS
  misplaced = [name for name in foreign if flags.FLAGS[name].present]
  if misplaced:
    where = ("--split=date and --split=random, not to --split=passes" if passes
             else "--split=passes")
    raise app.UsageError(
        f"These flags apply only to {where}: "
        f"{', '.join('--' + name for name in misplaced)}")


def main(argv: Sequence[str]) -> int:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(
        f"Expected one command, download or prepare. Received: {list(argv[1:])}")
  command = argv[1]
  _check_flags_of(command)
  options = flags.FLAGS
  default_dir = os.path.join(default_data_dir(), "kuairand")

  if command == "download":
    dest = options.dest or default_dir
    try:
      download(dest, url=options.url, checksum=options.checksum,
               expected_size=options.expected_size, retries=options.retries,
               extract=options.extract)
    except DownloadError as error:
      logging.error("Downloading KuaiRand-Pure failed: %s", error)
      return 1
    print(f"KuaiRand-Pure is in {dest}. Next: python -m data.kuairand prepare --src={dest}")
    return 0

  src = options.src or default_dir
  out_dir = options.out or os.path.join(default_data_dir(), DATASET_NAME)
  if options.split == PASS_SPLIT:
    return _run_prepare_passes(src, out_dir)
  try:
    stats = prepare(
        src, out_dir, split=options.split, seed=options.seed,
        train_end_date=options.train_end_date, valid_end_date=options.valid_end_date,
        min_tab_rows=options.min_tab_rows, fallback_tab=options.fallback_tab,
        test_random=options.test_random, num_buckets=options.num_buckets,
        rows_per_shard=options.rows_per_shard, min_id_rows=options.min_id_rows)
  except (FileNotFoundError, ValueError) as error:
    logging.error("Preparing KuaiRand-Pure failed: %s", error)
    return 1
  print(format_summary(stats))
  print(f"Feature config: {os.path.join(out_dir, 'feature_config.json')}")
  return 0


def _run_prepare_passes(src: str, out_dir: str) -> int:
  options = flags.FLAGS
  try:
    stats = prepare_passes(
        src, out_dir, seed=options.seed, pass_days=options.pass_days,
        valid_fraction=options.valid_fraction, min_tab_rows=options.min_tab_rows,
        fallback_tab=options.fallback_tab, test_random=options.test_random,
        num_buckets=options.num_buckets, rows_per_shard=options.rows_per_shard,
        prior_min_frequency=options.prior_min_frequency,
        prior_oov_buckets=options.prior_oov_buckets)
  except (FileNotFoundError, ValueError) as error:
    logging.error("Preparing the KuaiRand-Pure passes failed: %s", error)
    return 1
  print(format_pass_summary(stats))
  print(f"Passes: {os.path.join(out_dir, PASSES_FILE)}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
