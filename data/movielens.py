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

Usage:

    python -m data.movielens --out_dir=/tmp/movielens_100k
"""

import hashlib
import json
import os
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
  specs.append({"name": "domain", "group": "domain", "dtype": "int64"})
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
    logging.info("All outputs exist in %s, so nothing is rebuilt (force=True rebuilds them).", out_dir)
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
      f"Seed of the random 8:1:1 split. {DEFAULT_SEED} gives the reference split.")
  flags.DEFINE_bool("force", False, "Rebuild the outputs even if they already exist.")


def main(argv: Sequence[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  options = flags.FLAGS
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


if __name__ == "__main__":
  _define_flags()
  app.run(main)
