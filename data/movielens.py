"""Build the MovieLens-100K multi-domain, multi-task dataset as TFRecord files.

Source: the `recbole==1.2.1` wheel from PyPI (MIT) ships MovieLens-100K as RecBole
atomic files (`ml-100k.{inter,user,item,kg,link}`: tab-separated, first line
`name:type` per column). The wheel is downloaded once with `pip download` into a
cache directory and read with `zipfile`, so neither recbole nor torch is installed.
MovieLens' terms forbid redistribution, so the data and every file derived from it
stay in local directories and are never committed.

Definition, one sample per rating:

- domain: user age group, 0 = age < 25, 1 = 25-34, 2 = 35 and over.
- tasks: `like` = rating >= 4, `love` = rating == 5.
- prior ids: user_id, item_id, director. The director comes from `ml-100k.link`
  (item -> Freebase entity) and the `ml-100k.kg` rows whose relation is
  `film.film.directed_by`. A film with several directors gets the smallest entity
  id, and an item without a director gets "", which maps to OOV.
- general features: gender, occupation, first character of the zip code (a letter
  for the 18 users whose code starts with one), release year (0 if unknown), first genre of the item's genre
  list, and hour and weekday (Monday = 0) of the rating timestamp in UTC.
- domain-side features: the domain id, plus for the sample's (item, domain) pair the
  number of training ratings and smoothed like- and love-rates. A training row's
  statistics leave out that row itself, so they never contain its own label.
  Validation and test rows use all training rows. Smoothing:
  `rate = (positives + prior_rate * k) / (count + k)` with `k = 10` and
  `prior_rate` the task's positive rate over the whole training split. The prior is
  one constant for all rows, so it carries no information about any row's label.
  Inside one (item, domain) group, positive training rows still get a lower rate
  than negative ones (see `add_domain_statistics`).
- split: random 8:1:1 of the rating rows, the permutation
  `numpy.random.default_rng(seed).permutation(num_rows)`, seed 2023 by default.

Outputs in `out_dir`: `train.tfrecord`, `valid.tfrecord`, `test.tfrecord`
(uncompressed `tf.train.Example`, one per rating, in permutation order),
`feature_config.json` (vocabularies and bucket boundaries from the training split
only) and `stats.json` (rows and positive rates per split and domain).

The `passes` command writes a time-ordered layout for incremental training
instead: weekly (`--pass_days`) passes, each trained on one period and tested on
the next, with statistics from the cumulative history and one feature config that
admits ids from counts (see `prepare_passes`).

Usage:

    python -m data.movielens --out_dir=/tmp/movielens_100k
    python -m data.movielens passes --out=/tmp/ml_passes [--pass_days=7] \
        [--valid_fraction=0.1] [--seed=2023] [--force]
"""

import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

from pepnet_tf import features as features_lib

RECBOLE_VERSION = "1.2.1"
WHEEL_FILENAME = f"recbole-{RECBOLE_VERSION}-py3-none-any.whl"
# SHA-256 of the wheel that PyPI serves. A cached file with another digest is rejected.
WHEEL_SHA256 = "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407"
MEMBER_PREFIX = "recbole/dataset_example/ml-100k/ml-100k."

DATASET_NAME = "movielens_100k"
DATA_DIR_ENV = "PEPNET_TF_DATA_DIR"
DEFAULT_SEED = 2023
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

# Lower age bounds of domains 1 and 2. Domain 0 is every age below 25.
AGE_BOUNDARIES = (25, 35)
DOMAINS = (0, 1, 2)
DOMAIN_NAMES = ("age < 25", "age 25-34", "age 35+")
DIRECTED_BY_RELATION = "film.film.directed_by"
TASKS = ("like", "love")
SMOOTHING_K = 10.0
NUM_QUANTILES = 20
EMBEDDING_DIM = 16

PRIOR_FEATURES = (("user_id", "int64"), ("item_id", "int64"), ("director", "string"))
GENERAL_FEATURES = (
    ("gender", "string"),
    ("occupation", "string"),
    ("zip_prefix", "string"),
    ("release_year", "int64"),
    ("genre", "string"),
    ("hour", "int64"),
    ("weekday", "int64"),
)
DOMAIN_SIDE_FEATURES = (
    "item_domain_count",
    "item_domain_like_rate",
    "item_domain_love_rate",
)
# Values that mean "unknown". They stay out of the vocabularies, so they map to OOV.
UNKNOWN_VALUES = {"director": "", "release_year": 0}

# Every column of the TFRecords and its dtype. `timestamp` is extra data for
# ordering and is not listed in the feature config.
OUTPUT_COLUMNS = dict(
    PRIOR_FEATURES + GENERAL_FEATURES
    + tuple((name, "float32") for name in DOMAIN_SIDE_FEATURES)
    + (("domain", "int64"), ("timestamp", "int64"))
    + tuple((task, "int64") for task in TASKS))

OUTPUT_FILES = tuple(f"{split}.tfrecord" for split in SPLITS) + (
    "feature_config.json", "stats.json")

Columns = Dict[str, np.ndarray]


class DownloadError(RuntimeError):
  """Raised when the recbole wheel cannot be downloaded or fails its checksum."""


def default_data_dir() -> str:
  """Return `$PEPNET_TF_DATA_DIR` if set, else `~/.cache/pepnet_tf`."""
  configured = os.environ.get(DATA_DIR_ENV)
  if configured:
    return configured
  return os.path.join(os.path.expanduser("~"), ".cache", "pepnet_tf")


# ---------------------------------------------------------------------------
# Source download and parsing.
# ---------------------------------------------------------------------------


def fetch_wheel(cache_dir: str) -> str:
  """Return the path of the cached recbole wheel, downloading it with pip if absent."""
  path = os.path.join(cache_dir, WHEEL_FILENAME)
  if not os.path.exists(path):
    os.makedirs(cache_dir, exist_ok=True)
    logging.info("Downloading %s into %s", WHEEL_FILENAME, cache_dir)
    # The wheel lands in a private directory first, so that a concurrent or
    # interrupted download never leaves a partial file under the final name.
    with tempfile.TemporaryDirectory(dir=cache_dir) as staging:
      command = [sys.executable, "-m", "pip", "download", "--no-deps",
                 "--only-binary=:all:", f"recbole=={RECBOLE_VERSION}", "-d", staging]
      result = subprocess.run(command, capture_output=True, text=True, check=False)
      downloaded = os.path.join(staging, WHEEL_FILENAME)
      if result.returncode != 0 or not os.path.exists(downloaded):
        output = (result.stderr or result.stdout).strip()[-2000:]
        raise DownloadError(
            f"Downloading {WHEEL_FILENAME} with pip failed (exit code "
            f"{result.returncode}). Download it by hand with\n"
            f"  pip download --no-deps recbole=={RECBOLE_VERSION} -d {cache_dir}\n"
            f"or copy the wheel to {path}. pip output:\n{output}")
      os.replace(downloaded, path)

  digest = _sha256(path)
  if digest != WHEEL_SHA256:
    raise DownloadError(
        f"{path} has SHA-256 {digest}, expected {WHEEL_SHA256} (recbole=={RECBOLE_VERSION} "
        "from PyPI). Delete the file and run again to download it afresh.")
  return path


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def read_atomic_file(wheel: zipfile.ZipFile, extension: str,
                     required: Sequence[str]) -> Dict[str, List[str]]:
  """Read one RecBole atomic file of the wheel into columns of raw strings.

  Args:
    wheel: the open recbole wheel.
    extension: "inter", "user", "item", "kg" or "link".
    required: column names that must be present. Other columns are dropped.

  Returns:
    A dict from column name (the header's `name` before `:type`) to its values.
  """
  member = MEMBER_PREFIX + extension
  try:
    text = wheel.read(member).decode("utf-8")
  except KeyError as error:
    raise ValueError(f"{member} not found in {wheel.filename}.") from error

  lines = [line for line in text.split("\n") if line]
  header = [field.split(":", 1)[0] for field in lines[0].split("\t")]
  missing = [name for name in required if name not in header]
  if missing:
    raise ValueError(f"{member} has no column {missing}. Header: {lines[0]!r}")

  rows = [line.split("\t") for line in lines[1:]]
  bad = [number for number, row in enumerate(rows, start=2) if len(row) != len(header)]
  if bad:
    raise ValueError(
        f"{member} has {len(bad)} lines whose field count differs from the header's "
        f"{len(header)}, first at line {bad[0]}.")
  return {name: [row[header.index(name)] for row in rows] for name in required}


def load_ratings(wheel_path: str) -> Columns:
  """Join ratings with user and item attributes into one array per column.

  Rows are in the order of `ml-100k.inter`. The columns are those of
  `OUTPUT_COLUMNS` except the domain-side statistics, which depend on the split.
  """
  with zipfile.ZipFile(wheel_path) as wheel:
    inter = read_atomic_file(wheel, "inter", ("user_id", "item_id", "rating", "timestamp"))
    users = read_atomic_file(wheel, "user",
                             ("user_id", "age", "gender", "occupation", "zip_code"))
    items = read_atomic_file(wheel, "item", ("item_id", "release_year", "class"))
    links = read_atomic_file(wheel, "link", ("item_id", "entity_id"))
    kg = read_atomic_file(wheel, "kg", ("head_id", "relation_id", "tail_id"))

  user_ids = np.array(inter["user_id"], dtype=np.int64)
  item_ids = np.array(inter["item_id"], dtype=np.int64)
  ratings = np.array(inter["rating"], dtype=np.float64)
  timestamps = _parse_timestamps(inter["timestamp"])

  user_rows = {int(user): row for row, user in enumerate(users["user_id"])}
  item_rows = {int(item): row for row, item in enumerate(items["item_id"])}
  _check_known(user_ids, user_rows, "user_id", "ml-100k.user")
  _check_known(item_ids, item_rows, "item_id", "ml-100k.item")
  user_index = np.array([user_rows[user] for user in user_ids.tolist()])
  item_index = np.array([item_rows[item] for item in item_ids.tolist()])

  ages = np.array(users["age"], dtype=np.int64)
  zip_prefixes = np.array([zip_code[:1] for zip_code in users["zip_code"]])
  release_years = np.array([parse_release_year(year) for year in items["release_year"]],
                           dtype=np.int64)
  genres = np.array([first_genre(genre_list) for genre_list in items["class"]])
  directors = directors_by_item(links, kg)
  hours, weekdays = utc_hour_and_weekday(timestamps)

  return {
      "user_id": user_ids,
      "item_id": item_ids,
      "director": np.array([directors.get(item, UNKNOWN_VALUES["director"])
                            for item in item_ids.tolist()]),
      "gender": np.array(users["gender"])[user_index],
      "occupation": np.array(users["occupation"])[user_index],
      "zip_prefix": zip_prefixes[user_index],
      "release_year": release_years[item_index],
      "genre": genres[item_index],
      "hour": hours,
      "weekday": weekdays,
      "domain": age_to_domain(ages[user_index]),
      "timestamp": timestamps,
      "like": (ratings >= 4).astype(np.int64),
      "love": (ratings == 5).astype(np.int64),
  }


def _parse_timestamps(values: Sequence[str]) -> np.ndarray:
  # The header types timestamps as float, but they are whole seconds.
  seconds = np.array(values, dtype=np.float64)
  if not np.array_equal(seconds, np.floor(seconds)):
    raise ValueError("ml-100k.inter has timestamps that are not whole seconds.")
  return seconds.astype(np.int64)


def _check_known(ids: np.ndarray, known: Mapping[int, int], column: str, source: str) -> None:
  unknown = sorted(set(ids.tolist()) - set(known))
  if unknown:
    raise ValueError(
        f"ml-100k.inter has {len(unknown)} {column} values missing from {source}, "
        f"e.g. {unknown[:5]}")


# ---------------------------------------------------------------------------
# Feature definitions.
# ---------------------------------------------------------------------------


def age_to_domain(ages: np.ndarray) -> np.ndarray:
  """Map ages to domains: 0 below 25, 1 for 25-34, 2 for 35 and over (int64)."""
  return np.digitize(np.asarray(ages), AGE_BOUNDARIES).astype(np.int64)


def parse_release_year(token: str) -> int:
  """Return the four-digit year of an item's `release_year` token, 0 if it has none.

  Two items lack a year in recbole 1.2.1: item 267 has "unkonwn" and item 1412 has "V".
  """
  return int(token) if len(token) == 4 and token.isdigit() else 0


def first_genre(genre_list: str) -> str:
  """Return the first genre of a space-separated genre list, "unknown" if it is empty.

  The lists are in alphabetical order, not by importance, so "Action" comes first
  whenever an item has it.
  """
  genres = genre_list.split()
  return genres[0] if genres else "unknown"


def utc_hour_and_weekday(timestamps: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Return the UTC hour (0-23) and weekday (Monday = 0) of Unix timestamps in seconds."""
  seconds = np.asarray(timestamps, dtype=np.int64)
  days = seconds // 86400
  hours = (seconds % 86400) // 3600
  # 1970-01-01 was a Thursday, weekday 3 when Monday is 0.
  weekdays = (days + 3) % 7
  return hours, weekdays


def directors_by_item(links: Mapping[str, Sequence[str]],
                      kg: Mapping[str, Sequence[str]]) -> Dict[int, str]:
  """Map item ids to the Freebase entity id of their director.

  Args:
    links: columns "item_id" and "entity_id" of `ml-100k.link`.
    kg: columns "head_id", "relation_id" and "tail_id" of `ml-100k.kg`, where a
      `film.film.directed_by` row has the film as head and the director as tail.

  Returns:
    A dict from item id to director. A film with several directors gets the
    smallest director entity id, so the choice does not depend on row order.
    Items without a link or a director are absent.
  """
  director_by_film = {}
  for film, relation, person in zip(kg["head_id"], kg["relation_id"], kg["tail_id"]):
    if relation != DIRECTED_BY_RELATION:
      continue
    current = director_by_film.get(film)
    if current is None or person < current:
      director_by_film[film] = person

  return {int(item): director_by_film[entity]
          for item, entity in zip(links["item_id"], links["entity_id"])
          if entity in director_by_film}


# ---------------------------------------------------------------------------
# Split and per (item, domain) statistics.
# ---------------------------------------------------------------------------


def split_indices(num_rows: int, seed: int) -> Dict[str, np.ndarray]:
  """Split row indices 8:1:1 into train, valid and test by one seeded permutation."""
  permutation = np.random.default_rng(seed).permutation(num_rows)
  num_train = int(num_rows * SPLIT_FRACTIONS[0])
  num_valid = int(num_rows * SPLIT_FRACTIONS[1])
  return {
      "train": permutation[:num_train],
      "valid": permutation[num_train:num_train + num_valid],
      "test": permutation[num_train + num_valid:],
  }


def smoothed_rate(positives: np.ndarray, counts: np.ndarray, prior_rate: float,
                  k: float = SMOOTHING_K) -> np.ndarray:
  """Return `(positives + prior_rate * k) / (counts + k)`, the rate shrunk to the prior."""
  return (np.asarray(positives, dtype=np.float64) + prior_rate * k) / (
      np.asarray(counts, dtype=np.float64) + k)


def leave_one_out_counts(keys: np.ndarray, labels: np.ndarray,
                         num_keys: int) -> Tuple[np.ndarray, np.ndarray]:
  """Count the rows and positives that share each row's key, excluding the row itself.

  Args:
    keys: int array `(num_rows,)`, the group of each row, in `[0, num_keys)`.
    labels: 0/1 array `(num_rows,)`.
    num_keys: number of groups.

  Returns:
    `(counts, positives)`, two arrays `(num_rows,)`.
  """
  labels = np.asarray(labels, dtype=np.float64)
  counts = np.bincount(keys, minlength=num_keys)
  positives = np.bincount(keys, weights=labels, minlength=num_keys)
  return counts[keys] - 1, positives[keys] - labels


def lookup_counts(train_keys: np.ndarray, train_labels: np.ndarray, query_keys: np.ndarray,
                  num_keys: int) -> Tuple[np.ndarray, np.ndarray]:
  """Count the training rows and positives with each query row's key.

  Returns:
    `(counts, positives)`, two arrays shaped like `query_keys`, 0 for unseen keys.
  """
  counts = np.bincount(train_keys, minlength=num_keys)
  positives = np.bincount(train_keys, weights=np.asarray(train_labels, dtype=np.float64),
                          minlength=num_keys)
  return counts[query_keys], positives[query_keys]


def add_domain_statistics(splits: Dict[str, Columns]) -> Dict[str, float]:
  """Add the per (item, domain) count and like/love rates to every split, in place.

  Training rows get leave-one-out statistics. Validation and test rows get the
  statistics of all training rows.

  NOTE: inside one (item, domain) group, every positive training row gets a rate
  lower by exactly 1 / (count + k) than every negative row. With the seed-2023
  split and the 20-quantile buckets of `build_feature_config`, the bucket alone
  separates positives from negatives inside their group for about 65% of training
  rows. A model that memorizes item id x domain x bucket can therefore read
  training labels. Out-of-fold (K-fold) statistics would remove this. Validation
  and test rows are not affected.

  Returns:
    The prior rate of each task, its positive rate over the training split.
  """
  train = splits["train"]
  num_items = max(int(columns["item_id"].max()) for columns in splits.values()) + 1
  num_keys = num_items * len(DOMAINS)

  def keys_of(columns: Columns) -> np.ndarray:
    return columns["item_id"] * len(DOMAINS) + columns["domain"]

  train_keys = keys_of(train)
  priors = {task: float(train[task].mean()) for task in TASKS}
  for name, columns in splits.items():
    for task in TASKS:
      if name == "train":
        counts, positives = leave_one_out_counts(train_keys, train[task], num_keys)
      else:
        counts, positives = lookup_counts(train_keys, train[task], keys_of(columns), num_keys)
      columns[f"item_domain_{task}_rate"] = smoothed_rate(
          positives, counts, priors[task]).astype(np.float32)
    # The counts are the same for every task.
    columns["item_domain_count"] = counts.astype(np.float32)
  return priors


# ---------------------------------------------------------------------------
# Feature config, stats and output files.
# ---------------------------------------------------------------------------


def vocabulary(values: np.ndarray, name: str) -> List[Any]:
  """Return the sorted distinct values of a column, without its "unknown" value."""
  distinct = np.unique(values).tolist()
  unknown = UNKNOWN_VALUES.get(name)
  return [value for value in distinct if value != unknown]


def quantile_boundaries(values: np.ndarray, num_quantiles: int = NUM_QUANTILES) -> List[float]:
  """Return the distinct inner quantile cut points of `values`, rounded to 6 decimals.

  `num_quantiles` equal-frequency buckets have `num_quantiles - 1` inner cut points.
  Ties in the data merge some of them, so fewer may come back.
  """
  levels = np.linspace(0.0, 1.0, num_quantiles + 1)[1:-1]
  cuts = np.quantile(np.asarray(values, dtype=np.float64), levels)
  return [float(cut) for cut in np.unique(np.round(cuts, 6))]


def build_feature_config(train: Columns) -> features_lib.FeatureConfig:
  """Build the feature config with vocabularies and boundaries from the training split."""
  specs = []
  for name, dtype in PRIOR_FEATURES:
    specs.append({"name": name, "group": "prior", "dtype": dtype,
                  "vocabulary": vocabulary(train[name], name), "num_oov_buckets": 1})
  for name, dtype in GENERAL_FEATURES:
    specs.append({"name": name, "group": "general", "dtype": dtype,
                  "vocabulary": vocabulary(train[name], name), "num_oov_buckets": 1})
  for name in DOMAIN_SIDE_FEATURES:
    specs.append({"name": name, "group": "domain_side", "dtype": "float32",
                  "boundaries": quantile_boundaries(train[name])})
  return _config_from_specs(specs)


def _config_from_specs(specs: List[Dict[str, Any]]) -> features_lib.FeatureConfig:
  """Append the domain and label features to `specs` and build the validated config."""
  specs = specs + [{"name": "domain", "group": "domain", "dtype": "int64"}]
  for task in TASKS:
    specs.append({"name": task, "group": "label", "dtype": "int64"})

  return features_lib.from_dict({
      "name": DATASET_NAME,
      "format": "tfrecord",
      "embedding_dim": EMBEDDING_DIM,
      "domain": {"feature": "domain", "values": list(DOMAINS)},
      "user_id_feature": "user_id",
      "features": specs,
  })


def _positive_rates(columns: Columns, mask: Optional[np.ndarray] = None) -> Dict[str, float]:
  return {task: round(float(columns[task][mask].mean() if mask is not None
                            else columns[task].mean()), 6)
          for task in TASKS}


def compute_stats(splits: Mapping[str, Columns], seed: int,
                  priors: Mapping[str, float]) -> Dict[str, Any]:
  """Return rows and positive rates per split and per domain, in JSON form."""
  per_split = {}
  for name, columns in splits.items():
    domains = {}
    for domain in DOMAINS:
      mask = columns["domain"] == domain
      domains[str(domain)] = {"rows": int(mask.sum()),
                              "positive_rate": _positive_rates(columns, mask)}
    per_split[name] = {"rows": len(columns["domain"]),
                       "positive_rate": _positive_rates(columns),
                       "domains": domains}
  return {
      "name": DATASET_NAME,
      "source": f"recbole=={RECBOLE_VERSION} dataset_example/ml-100k",
      "seed": seed,
      "smoothing_k": SMOOTHING_K,
      "prior_rate": {task: round(rate, 6) for task, rate in priors.items()},
      "rows": {name: split["rows"] for name, split in per_split.items()},
      "splits": per_split,
  }


def format_summary(stats: Mapping[str, Any]) -> str:
  """Render `stats.json` content as a table of rows and positive rates."""
  lines = [
      f"{stats['name']} (seed {stats['seed']}): "
      + ", ".join(f"{name} {rows}" for name, rows in stats["rows"].items()) + " rows",
      f"{'split':<6} {'domain':<14} {'rows':>7}" + "".join(f" {task:>6}" for task in TASKS),
  ]
  for name, split in stats["splits"].items():
    rows = [("all", split)] + [
        (f"{domain} {DOMAIN_NAMES[int(domain)]}", value)
        for domain, value in split["domains"].items()]
    for label, value in rows:
      rates = "".join(f" {value['positive_rate'][task]:6.3f}" for task in TASKS)
      lines.append(f"{name:<6} {label:<14} {value['rows']:>7}{rates}")
  return "\n".join(lines)


def write_tfrecord(path: str, columns: Columns) -> None:
  """Write one uncompressed `tf.train.Example` per row with the `OUTPUT_COLUMNS`."""
  values = {name: columns[name].tolist() for name in OUTPUT_COLUMNS}
  num_rows = len(values["domain"])
  with tf.io.TFRecordWriter(path) as writer:
    for row in range(num_rows):
      feature = {}
      for name, dtype in OUTPUT_COLUMNS.items():
        value = values[name][row]
        if dtype == "int64":
          feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        elif dtype == "float32":
          feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        else:
          feature[name] = tf.train.Feature(
              bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
      example = tf.train.Example(features=tf.train.Features(feature=feature))
      writer.write(example.SerializeToString())


def outputs_exist(out_dir: str) -> bool:
  """Return whether every output file of `prepare` is present in `out_dir`."""
  return all(os.path.exists(os.path.join(out_dir, name)) for name in OUTPUT_FILES)


def prepare(out_dir: str, cache_dir: Optional[str] = None, seed: int = DEFAULT_SEED,
            force: bool = False) -> str:
  """Build the dataset into `out_dir` and return `out_dir`.

  Args:
    out_dir: directory for the TFRecords, `feature_config.json` and `stats.json`.
    cache_dir: directory that caches the recbole wheel, by default
      `default_data_dir()/downloads`.
    seed: seed of the 8:1:1 split.
    force: rebuild even if all outputs exist.

  Returns:
    `out_dir`. If all outputs exist and `force` is false, nothing is rebuilt.

  Raises:
    DownloadError: the wheel could not be downloaded or has the wrong checksum.
    ValueError: existing outputs were built with another seed, or the source files
      are malformed.
  """
  if not force and outputs_exist(out_dir):
    with open(os.path.join(out_dir, "stats.json"), encoding="utf-8") as handle:
      existing_seed = json.load(handle).get("seed")
    if existing_seed != seed:
      raise ValueError(
          f"{out_dir} contains a dataset built with seed {existing_seed}, not {seed}. "
          "Pass force=True (--force) to rebuild it, or choose another out_dir.")
    logging.info("All outputs exist in %s, so nothing is rebuilt (--force or force=True rebuilds them).", out_dir)
    return out_dir

  start = time.time()
  if cache_dir is None:
    cache_dir = os.path.join(default_data_dir(), "downloads")
  wheel_path = fetch_wheel(cache_dir)
  columns = load_ratings(wheel_path)
  num_rows = len(columns["domain"])
  logging.info("Read %d ratings from %s", num_rows, wheel_path)

  splits = {name: {column: values[indices] for column, values in columns.items()}
            for name, indices in split_indices(num_rows, seed).items()}
  priors = add_domain_statistics(splits)
  config = build_feature_config(splits["train"])
  stats = compute_stats(splits, seed, priors)

  # Every file is written under a temporary name and renamed at the end, so an
  # interrupted run never leaves a set of outputs that looks complete.
  os.makedirs(out_dir, exist_ok=True)
  staged = []
  for name in SPLITS:
    path = os.path.join(out_dir, f"{name}.tfrecord.tmp")
    write_tfrecord(path, splits[name])
    staged.append(path)
  config_path = os.path.join(out_dir, "feature_config.json.tmp")
  config.save(config_path)
  stats_path = os.path.join(out_dir, "stats.json.tmp")
  with open(stats_path, "w", encoding="utf-8") as handle:
    json.dump(stats, handle, indent=2)
    handle.write("\n")
  for path in staged + [config_path, stats_path]:
    os.replace(path, path[:-len(".tmp")])

  logging.info("Wrote %s to %s in %.1f s", ", ".join(OUTPUT_FILES), out_dir,
               time.time() - start)
  return out_dir


# ---------------------------------------------------------------------------
# Time-ordered training passes.
# ---------------------------------------------------------------------------

SECONDS_PER_DAY = 86400
DEFAULT_PASS_DAYS = 7
DEFAULT_VALID_FRACTION = 0.1
PASSES_MANIFEST = "passes.json"
PASS_FILES = tuple(f"{split}.tfrecord" for split in SPLITS)
# Admission from training counts for the prior ids of the pass layout: an id needs at
# least this many counted training rows for an embedding row of its own, and the
# others share the hashed OOV buckets.
PASS_ID_MIN_FREQUENCY = 2
PASS_ID_NUM_OOV_BUCKETS = 4
# General vocabulary features admit every value seen once, so a value that first
# occurs in a later pass enters the vocabulary of that pass.
PASS_GENERAL_MIN_FREQUENCY = 1
# Fixed boundaries of the domain-side buckets, the same for every pass because the
# embedding tables of bucketized features keep their size across warm starts.
# Counts grow with the history: with 7-day passes the largest count of a training row
# is 14 in the first pass and 216 in the last one. Their boundaries are log-scale:
# 1, 2, 3, then 4 and 6 times each power of two up to 512. Count 0 has a bucket of
# its own, and one bucket contains everything from 512 on. Quantiles of the first pass
# would put most later counts into the top bucket, and quantiles of all passes would
# give early passes boundaries taken from later periods.
PASS_COUNT_BOUNDARIES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256,
                         384, 512)
# Smoothed rates lie in [0, 1] however long the history is, so an even grid of step
# 0.05 keeps its meaning in every pass. Short histories keep rates near the prior,
# longer ones spread them over more buckets.
PASS_RATE_BOUNDARIES = tuple(round(0.05 * step, 2) for step in range(1, 20))
_PASS_DIR_PATTERN = re.compile(r"pass_[0-9]{3,}")


def assign_periods(timestamps: np.ndarray, pass_days: int) -> Tuple[np.ndarray, int]:
  """Return the period index of each timestamp and the first period's start.

  Period k covers `[t0 + k * pass_days, t0 + (k + 1) * pass_days)` days, where `t0`
  is the UTC midnight that starts the day of the earliest timestamp.

  Returns:
    `(periods, t0)`: int64 array shaped like `timestamps`, and `t0` in Unix seconds.
  """
  seconds = np.asarray(timestamps, dtype=np.int64)
  t0 = int(seconds.min()) // SECONDS_PER_DAY * SECONDS_PER_DAY
  return (seconds - t0) // (pass_days * SECONDS_PER_DAY), t0


def merge_empty_periods(periods: np.ndarray, t0: int,
                        pass_days: int) -> Tuple[np.ndarray, List[Tuple[int, int]]]:
  """Merge every period without rows into the next one that has rows.

  Returns:
    `(merged, windows)`: the merged period of each row (0, 1, ... over the periods
    that have rows) and the `[start, end)` Unix seconds of each merged period. A
    merged period starts where the previous one ends, so the windows cover the whole
    time range without gaps, and only the first one starts at `t0`.
  """
  occupied, merged = np.unique(periods, return_inverse=True)
  length = pass_days * SECONDS_PER_DAY
  windows = []
  start = t0
  for period in occupied.tolist():
    end = t0 + (period + 1) * length
    windows.append((start, end))
    start = end
  return merged.astype(np.int64).reshape(np.shape(periods)), windows


def split_pass_rows(num_rows: int, valid_fraction: float, seed: int,
                    pass_index: int) -> Tuple[np.ndarray, np.ndarray]:
  """Split the rows of one pass into training and validation row indices.

  The first `int(num_rows * valid_fraction)` positions of
  `numpy.random.default_rng([seed, pass_index]).permutation(num_rows)` are the
  validation rows, so every pass has its own draw. Both index arrays are sorted,
  which keeps the rows in time order.

  Returns:
    `(train, valid)`, disjoint sorted index arrays that together hold every row.
  """
  permutation = np.random.default_rng([seed, pass_index]).permutation(num_rows)
  num_valid = int(num_rows * valid_fraction)
  return np.sort(permutation[num_valid:]), np.sort(permutation[:num_valid])


def add_pass_statistics(history: Columns, pass_splits: Dict[str, Columns]) -> Dict[str, float]:
  """Add the domain-side statistics of one pass to its splits, in place.

  The statistics of pass k come from its cumulative history: the training rows of
  passes 0 .. k, which are `history` (passes before k) and `pass_splits["train"]`.
  Training rows of pass k leave their own rating out (`add_domain_statistics` does
  this), and validation and test rows use the whole history. No row of a later
  period is read.

  Args:
    history: columns "item_id", "domain" and the tasks of the earlier passes'
      training rows.
    pass_splits: "train", "valid" and "test" columns of pass k.

  Returns:
    The prior rate of each task, its positive rate over the cumulative history.
  """
  stat_columns = ("item_id", "domain") + TASKS
  num_history = len(history["domain"])
  combined = {name: np.concatenate([history[name], pass_splits["train"][name]])
              for name in stat_columns}
  splits = {"train": combined}
  # `add_domain_statistics` sizes its tables from every split's largest item id,
  # which an empty split does not have.
  for name in ("valid", "test"):
    if len(pass_splits[name]["domain"]):
      splits[name] = {column: pass_splits[name][column] for column in stat_columns}
  priors = add_domain_statistics(splits)

  for feature in DOMAIN_SIDE_FEATURES:
    pass_splits["train"][feature] = combined[feature][num_history:]
    for name in ("valid", "test"):
      if name in splits:
        pass_splits[name][feature] = splits[name][feature]
      else:
        pass_splits[name][feature] = np.zeros(0, dtype=np.float32)
  return priors


def build_pass_feature_config(
    id_min_frequency: int = PASS_ID_MIN_FREQUENCY,
    id_num_oov_buckets: int = PASS_ID_NUM_OOV_BUCKETS) -> features_lib.FeatureConfig:
  """Build the feature config shared by every pass.

  It depends on no data. Every vocabulary feature is admitted from training counts
  by the trainer (`min_frequency`, no `vocabulary`), and the domain-side features
  use the fixed `PASS_COUNT_BOUNDARIES` and `PASS_RATE_BOUNDARIES`. The
  placeholders of `UNKNOWN_VALUES` (director "", release year 0) are listed as
  `unknown_values`, so they map to OOV as in the random-split config.
  """
  specs = []
  for name, dtype in PRIOR_FEATURES:
    specs.append({"name": name, "group": "prior", "dtype": dtype,
                  "min_frequency": id_min_frequency, "num_oov_buckets": id_num_oov_buckets})
  for name, dtype in GENERAL_FEATURES:
    specs.append({"name": name, "group": "general", "dtype": dtype,
                  "min_frequency": PASS_GENERAL_MIN_FREQUENCY})
  for spec in specs:
    if spec["name"] in UNKNOWN_VALUES:
      spec["unknown_values"] = [UNKNOWN_VALUES[spec["name"]]]
  for name in DOMAIN_SIDE_FEATURES:
    boundaries = PASS_COUNT_BOUNDARIES if name == "item_domain_count" else PASS_RATE_BOUNDARIES
    specs.append({"name": name, "group": "domain_side", "dtype": "float32",
                  "boundaries": [float(boundary) for boundary in boundaries]})
  return _config_from_specs(specs)


def _iso_date(seconds: int) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).date().isoformat()


def _check_pass_arguments(pass_days: Any, valid_fraction: Any, id_min_frequency: Any,
                          id_num_oov_buckets: Any) -> None:
  for name, value in (("pass_days", pass_days), ("id_min_frequency", id_min_frequency),
                      ("id_num_oov_buckets", id_num_oov_buckets)):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ValueError(f"{name} must be an integer >= 1. Received: {value!r}")
  if (not isinstance(valid_fraction, (int, float)) or isinstance(valid_fraction, bool)
      or not 0 <= valid_fraction < 1):
    raise ValueError(
        f"valid_fraction must be a number in [0, 1). Received: {valid_fraction!r}")


def _existing_passes(out_dir: str, settings: Mapping[str, Any],
                     config: features_lib.FeatureConfig) -> Optional[Dict[str, Any]]:
  """Return the complete manifest in `out_dir` built with `settings`, else None.

  Raises:
    ValueError: `out_dir` contains passes built with other settings or another
      feature config, or the random-split dataset, whose feature_config.json the
      passes would overwrite.
  """
  manifest_path = os.path.join(out_dir, PASSES_MANIFEST)
  if not os.path.exists(manifest_path):
    default_outputs = [name for name in ("stats.json", "train.tfrecord")
                       if os.path.exists(os.path.join(out_dir, name))]
    if default_outputs:
      raise ValueError(
          f"{out_dir} contains {', '.join(default_outputs)} of the random-split dataset, "
          "whose feature_config.json the passes would overwrite. Choose another out dir, "
          "or pass force=True (--force) to write the passes there anyway.")
    return None

  try:
    with open(manifest_path, encoding="utf-8") as handle:
      manifest = json.load(handle)
  except (OSError, json.JSONDecodeError) as error:
    raise ValueError(
        f"Cannot read {manifest_path}: {error}. Pass force=True (--force) to rebuild "
        "the passes.") from error
  differences = [f"{name} {manifest.get(name)!r}, not {value!r}"
                 for name, value in settings.items() if manifest.get(name) != value]
  try:
    existing_config = features_lib.load(os.path.join(out_dir, "feature_config.json"))
  except features_lib.FeatureConfigError:
    existing_config = None
  if existing_config is not None and existing_config.to_dict() != config.to_dict():
    differences.append("another feature config")
  if differences:
    raise ValueError(
        f"{out_dir} contains passes built with {', '.join(differences)}. Pass force=True "
        "(--force) to rebuild them, or choose another out dir.")

  expected = ["feature_config.json"] + [
      os.path.join(entry["name"], name) for entry in manifest.get("passes", [])
      for name in PASS_FILES]
  if existing_config is None or not all(
      os.path.exists(os.path.join(out_dir, name)) for name in expected):
    return None
  return manifest


def _remove_stale_pass_dirs(out_dir: str, keep: Sequence[str]) -> None:
  """Delete pass files of an earlier run from pass directories that `keep` lacks.

  Only the files this module writes are deleted, and a directory is removed only
  when nothing else is left in it.
  """
  removed = []
  for entry in sorted(os.listdir(out_dir)):
    path = os.path.join(out_dir, entry)
    if entry in keep or not _PASS_DIR_PATTERN.fullmatch(entry) or not os.path.isdir(path):
      continue
    for name in PASS_FILES:
      for candidate in (name, name + ".tmp"):
        if os.path.exists(os.path.join(path, candidate)):
          os.remove(os.path.join(path, candidate))
    if not os.listdir(path):
      os.rmdir(path)
    removed.append(entry)
  if removed:
    logging.info("Removed the files of %d passes of an earlier run from %s: %s",
                 len(removed), out_dir, ", ".join(removed))


def write_passes(columns: Columns, out_dir: str, pass_days: int, valid_fraction: float,
                 seed: int, config: features_lib.FeatureConfig) -> Dict[str, Any]:
  """Cut ratings into time-ordered passes and write them to `out_dir`.

  Files are written under temporary names and renamed at the end, `passes.json`
  last, so an interrupted run never leaves a layout that looks complete.

  Args:
    columns: ratings as returned by `load_ratings`, in any order.
    out_dir: directory of the pass layout.
    pass_days: length of a period in days.
    valid_fraction: share of each pass's rows that become validation rows.
    seed: seed of the validation draws.
    config: the feature config written as `feature_config.json`.

  Returns:
    The content of `passes.json`.
  """
  order = np.argsort(columns["timestamp"], kind="stable")
  columns = {name: values[order] for name, values in columns.items()}
  periods, t0 = assign_periods(columns["timestamp"], pass_days)
  merged, windows = merge_empty_periods(periods, t0, pass_days)
  if len(windows) < 2:
    raise ValueError(
        f"All ratings fall into one period of {pass_days} days, but the passes need at "
        "least two: one to train on and the next to test on. Choose a smaller pass_days.")
  num_empty = int(periods.max()) + 1 - len(windows)
  if num_empty:
    logging.info("Merged %d periods without ratings into the next period.", num_empty)

  manifest_path = os.path.join(out_dir, PASSES_MANIFEST)
  os.makedirs(out_dir, exist_ok=True)
  # A rebuild first removes the old manifest, so the directory never claims to hold
  # a complete layout while its files are being replaced.
  if os.path.exists(manifest_path):
    os.remove(manifest_path)

  history = {name: columns[name][:0] for name in ("item_id", "domain") + TASKS}
  staged = []
  entries = []
  for index in range(len(windows) - 1):
    rows = np.flatnonzero(merged == index)
    train_rows, valid_rows = split_pass_rows(len(rows), valid_fraction, seed, index)
    test_rows = np.flatnonzero(merged == index + 1)
    pass_splits = {
        "train": {name: values[rows[train_rows]] for name, values in columns.items()},
        "valid": {name: values[rows[valid_rows]] for name, values in columns.items()},
        "test": {name: values[test_rows] for name, values in columns.items()},
    }
    add_pass_statistics(history, pass_splits)
    history = {name: np.concatenate([values, pass_splits["train"][name]])
               for name, values in history.items()}

    name = f"pass_{index + 1:03d}"
    pass_dir = os.path.join(out_dir, name)
    os.makedirs(pass_dir, exist_ok=True)
    for split in SPLITS:
      path = os.path.join(pass_dir, f"{split}.tfrecord.tmp")
      write_tfrecord(path, pass_splits[split])
      staged.append(path)
    entries.append({
        "name": name,
        "start": _iso_date(windows[index][0]),
        "end": _iso_date(windows[index][1]),
        "test_start": _iso_date(windows[index + 1][0]),
        "test_end": _iso_date(windows[index + 1][1]),
        "train_rows": len(train_rows),
        "valid_rows": len(valid_rows),
        "test_rows": len(test_rows),
    })

  config_path = os.path.join(out_dir, "feature_config.json.tmp")
  config.save(config_path)
  for path in staged + [config_path]:
    os.replace(path, path[:-len(".tmp")])
  _remove_stale_pass_dirs(out_dir, [entry["name"] for entry in entries])

  manifest = {"dataset": DATASET_NAME, "pass_days": pass_days, "seed": seed,
              "valid_fraction": valid_fraction, "passes": entries}
  with open(manifest_path + ".tmp", "w", encoding="utf-8") as handle:
    json.dump(manifest, handle, indent=2)
    handle.write("\n")
  os.replace(manifest_path + ".tmp", manifest_path)
  return manifest


def prepare_passes(out_dir: str, cache_dir: Optional[str] = None,
                   pass_days: int = DEFAULT_PASS_DAYS,
                   valid_fraction: float = DEFAULT_VALID_FRACTION, seed: int = DEFAULT_SEED,
                   force: bool = False, id_min_frequency: int = PASS_ID_MIN_FREQUENCY,
                   id_num_oov_buckets: int = PASS_ID_NUM_OOV_BUCKETS,
                   columns: Optional[Columns] = None) -> Dict[str, Any]:
  """Build the time-ordered pass layout of MovieLens-100K into `out_dir`.

  Ratings are sorted by timestamp and cut into periods of `pass_days` days from the
  UTC midnight of the first rating. A period without ratings is merged into the
  next one. Pass k trains on period k, a seeded random `valid_fraction` of it being
  validation rows, and is tested on every row of period k + 1. The last period is
  only a test set. Domain-side statistics of pass k come from the training rows of
  passes 0 .. k (see `add_pass_statistics`).

  Layout: `feature_config.json` (one for all passes, see
  `build_pass_feature_config`), `passes.json` (settings, and per pass its name,
  ISO dates and row counts) and `pass_NNN/{train,valid,test}.tfrecord`, with the
  columns and encodings of the random-split dataset and rows in time order.

  Args:
    out_dir: directory of the layout.
    cache_dir: directory that caches the recbole wheel, by default
      `default_data_dir()/downloads`.
    pass_days: length of a period in days, at least 1.
    valid_fraction: share of each pass's rows drawn as validation rows, in [0, 1).
    seed: seed of the validation draws.
    force: rebuild even if a complete layout with these settings exists, and write
      over a layout with other settings.
    id_min_frequency: `min_frequency` of the prior ids in the feature config.
    id_num_oov_buckets: `num_oov_buckets` of the prior ids in the feature config.
    columns: ratings as returned by `load_ratings`. None reads them from the wheel.

  Returns:
    The content of `passes.json`. If a complete layout with the same settings
    exists and `force` is false, nothing is rebuilt.

  Raises:
    DownloadError: the wheel could not be downloaded or has the wrong checksum.
    ValueError: an argument is invalid, `out_dir` contains other data (see
      `_existing_passes`), or the ratings span only one period.
  """
  _check_pass_arguments(pass_days, valid_fraction, id_min_frequency, id_num_oov_buckets)
  config = build_pass_feature_config(id_min_frequency, id_num_oov_buckets)
  settings = {"dataset": DATASET_NAME, "pass_days": pass_days, "seed": seed,
              "valid_fraction": valid_fraction}
  if not force:
    existing = _existing_passes(out_dir, settings, config)
    if existing is not None:
      logging.info("All passes exist in %s, so nothing is rebuilt (--force or force=True "
                   "rebuilds them).", out_dir)
      return existing

  start = time.time()
  if columns is None:
    if cache_dir is None:
      cache_dir = os.path.join(default_data_dir(), "downloads")
    wheel_path = fetch_wheel(cache_dir)
    columns = load_ratings(wheel_path)
    logging.info("Read %d ratings from %s", len(columns["domain"]), wheel_path)
  manifest = write_passes(columns, out_dir, pass_days, valid_fraction, seed, config)
  logging.info("Wrote %d passes to %s in %.1f s", len(manifest["passes"]), out_dir,
               time.time() - start)
  return manifest


def format_passes_summary(manifest: Mapping[str, Any]) -> str:
  """Render `passes.json` content as a table of dates and rows per pass."""
  passes = manifest["passes"]
  lines = [
      f"{manifest['dataset']}: {len(passes)} passes of {manifest['pass_days']} days "
      f"(seed {manifest['seed']}, valid_fraction {manifest['valid_fraction']})",
      f"{'pass':<9} {'start':<10} {'end':<10} {'train':>6} {'valid':>6} {'test':>6}",
  ]
  for entry in passes:
    lines.append(f"{entry['name']:<9} {entry['start']:<10} {entry['end']:<10} "
                 f"{entry['train_rows']:>6} {entry['valid_rows']:>6} {entry['test_rows']:>6}")
  return "\n".join(lines)


PASSES_COMMAND = "passes"
# Flags that only the passes command reads. The default command rejects them.
_PASSES_FLAGS = ("out", "pass_days", "valid_fraction", "id_min_frequency",
                 "id_num_oov_buckets")


def _define_flags() -> None:
  flags.DEFINE_string(
      "out_dir", None,
      "Output directory for the TFRecords, feature_config.json and stats.json. "
      f"Default: <data dir>/{DATASET_NAME}, where the data dir is ${DATA_DIR_ENV} "
      "or ~/.cache/pepnet_tf.")
  flags.DEFINE_string(
      "cache_dir", None,
      f"Directory that caches {WHEEL_FILENAME}. Default: <data dir>/downloads.")
  flags.DEFINE_integer(
      "seed", DEFAULT_SEED,
      f"Seed of the random 8:1:1 split, or with `{PASSES_COMMAND}` of the validation "
      f"draws. {DEFAULT_SEED} gives the reference split.")
  flags.DEFINE_bool("force", False, "Rebuild the outputs even if they already exist.")
  flags.DEFINE_string(
      "out", None, f"`{PASSES_COMMAND}` only, required: output directory of the pass layout.")
  flags.DEFINE_integer(
      "pass_days", DEFAULT_PASS_DAYS, f"`{PASSES_COMMAND}` only: length of a pass in days.")
  flags.DEFINE_float(
      "valid_fraction", DEFAULT_VALID_FRACTION,
      f"`{PASSES_COMMAND}` only: share of each pass's rows drawn as validation rows, "
      "in [0, 1).")
  flags.DEFINE_integer(
      "id_min_frequency", PASS_ID_MIN_FREQUENCY,
      f"`{PASSES_COMMAND}` only: min_frequency of user_id, item_id and director in the "
      "feature config, the training rows an id needs to be admitted.")
  flags.DEFINE_integer(
      "id_num_oov_buckets", PASS_ID_NUM_OOV_BUCKETS,
      f"`{PASSES_COMMAND}` only: num_oov_buckets of user_id, item_id and director.")


def main(argv: Sequence[str]) -> int:
  """Run the default command (the random 8:1:1 split) or `passes`."""
  arguments = list(argv[1:])
  if arguments == [PASSES_COMMAND]:
    return _run_passes(flags.FLAGS)
  if arguments:
    raise app.UsageError(
        f"Unexpected arguments: {arguments}. The only command is {PASSES_COMMAND!r}, "
        "and without a command the random 8:1:1 split is built.")
  passes_flags_set = [f"--{name}" for name in _PASSES_FLAGS if flags.FLAGS[name].present]
  if passes_flags_set:
    raise app.UsageError(
        f"Only the {PASSES_COMMAND!r} command reads {', '.join(passes_flags_set)}: run "
        f"`python -m data.movielens {PASSES_COMMAND} ...`.")
  return _run_prepare(flags.FLAGS)


def _run_prepare(options: flags.FlagValues) -> int:
  out_dir = options.out_dir or os.path.join(default_data_dir(), DATASET_NAME)
  try:
    prepare(out_dir, cache_dir=options.cache_dir, seed=options.seed, force=options.force)
  except (DownloadError, ValueError) as error:
    logging.error("Preparing MovieLens-100K failed: %s", error)
    return 1

  with open(os.path.join(out_dir, "stats.json"), encoding="utf-8") as handle:
    print(format_summary(json.load(handle)))
  print(f"Feature config: {os.path.join(out_dir, 'feature_config.json')}")
  return 0


def _run_passes(options: flags.FlagValues) -> int:
  if options["out_dir"].present:
    raise app.UsageError(
        f"The {PASSES_COMMAND!r} command writes to --out, not --out_dir.")
  if not options.out:
    raise app.UsageError(f"The {PASSES_COMMAND!r} command needs --out=DIR.")
  try:
    manifest = prepare_passes(
        options.out, cache_dir=options.cache_dir, pass_days=options.pass_days,
        valid_fraction=options.valid_fraction, seed=options.seed, force=options.force,
        id_min_frequency=options.id_min_frequency,
        id_num_oov_buckets=options.id_num_oov_buckets)
  except (DownloadError, ValueError) as error:
    logging.error("Preparing the MovieLens-100K passes failed: %s", error)
    return 1

  print(format_passes_summary(manifest))
  print(f"Layout: {os.path.join(options.out, PASSES_MANIFEST)}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main)
