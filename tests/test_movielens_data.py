"""Tests of the MovieLens-100K preparation: helpers by hand, outputs against raw data.

The end-to-end tests build the dataset once per module into a temporary directory.
They need the recbole wheel: it is read from `<data dir>/downloads` and downloaded
there with pip if absent. The raw files are parsed again here, independently of
`data.movielens`, to check the outputs.
"""

import datetime
import json
import os
import subprocess
import sys
import zipfile

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import pytest
import tensorflow as tf

from data import movielens
from pepnet_tf import features as features_lib

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SEED = 2023
_K = 10.0

# The columns every record must have, with the tf.train.Feature list kind.
_COLUMN_KINDS = {
    "user_id": "int64_list", "item_id": "int64_list", "director": "bytes_list",
    "gender": "bytes_list", "occupation": "bytes_list", "zip_prefix": "bytes_list",
    "release_year": "int64_list", "genre": "bytes_list", "hour": "int64_list",
    "weekday": "int64_list", "domain": "int64_list", "item_domain_count": "float_list",
    "item_domain_like_rate": "float_list", "item_domain_love_rate": "float_list",
    "timestamp": "int64_list", "like": "int64_list", "love": "int64_list",
}
_KIND_DTYPES = {"int64_list": tf.int64, "float_list": tf.float32, "bytes_list": tf.string}


# ---------------------------------------------------------------------------
# Helpers on hand-made inputs.
# ---------------------------------------------------------------------------


def test_age_to_domain_boundaries():
  ages = np.array([7, 24, 25, 34, 35, 73])
  np.testing.assert_array_equal(movielens.age_to_domain(ages), [0, 0, 1, 1, 2, 2])


def test_leave_one_out_counts_by_hand():
  keys = np.array([0, 0, 0, 1, 1, 2])
  labels = np.array([1, 0, 1, 1, 0, 1])
  counts, positives = movielens.leave_one_out_counts(keys, labels, num_keys=3)
  # Key 0 has 3 rows with 2 positives, key 1 has 2 rows with 1, key 2 has 1 row with 1.
  np.testing.assert_array_equal(counts, [2, 2, 2, 1, 1, 0])
  np.testing.assert_array_equal(positives, [1, 2, 1, 0, 1, 0])


def test_smoothed_rate_by_hand():
  positives = np.array([1, 2, 0, 1, 0])
  counts = np.array([2, 2, 1, 1, 0])
  rates = movielens.smoothed_rate(positives, counts, prior_rate=0.25, k=10)
  # (1 + 2.5) / 12, (2 + 2.5) / 12, (0 + 2.5) / 11, (1 + 2.5) / 11, 2.5 / 10
  np.testing.assert_allclose(rates, [3.5 / 12, 4.5 / 12, 2.5 / 11, 3.5 / 11, 0.25])


def test_lookup_counts_by_hand():
  train_keys = np.array([0, 0, 2])
  train_labels = np.array([1, 0, 1])
  counts, positives = movielens.lookup_counts(
      train_keys, train_labels, query_keys=np.array([2, 1, 0]), num_keys=3)
  np.testing.assert_array_equal(counts, [1, 0, 2])
  np.testing.assert_array_equal(positives, [1, 0, 1])


def _tiny_splits(test_like):
  def columns(items, domains, likes):
    likes = np.array(likes)
    return {"item_id": np.array(items), "domain": np.array(domains),
            "like": likes, "love": likes}
  return {
      "train": columns([1, 1, 1, 2], [0, 0, 1, 0], [1, 0, 1, 0]),
      "valid": columns([1, 3], [0, 0], [0, 1]),
      "test": columns([1], [0], [test_like]),
  }


def test_add_domain_statistics_by_hand():
  splits = _tiny_splits(test_like=1)
  priors = movielens.add_domain_statistics(splits)
  assert priors == {"like": 0.5, "love": 0.5}

  # (item 1, domain 0) has training rows 0 and 1, so each row counts only the other.
  train = splits["train"]
  np.testing.assert_array_equal(train["item_domain_count"], [1, 1, 0, 0])
  np.testing.assert_allclose(train["item_domain_like_rate"],
                             [5 / 11, 6 / 11, 0.5, 0.5], rtol=1e-6)
  # Validation rows see both training rows of (1, 0) and none of the unseen item 3.
  valid = splits["valid"]
  np.testing.assert_array_equal(valid["item_domain_count"], [2, 0])
  np.testing.assert_allclose(valid["item_domain_like_rate"], [6 / 12, 0.5], rtol=1e-6)


def test_add_domain_statistics_ignores_eval_labels():
  positive = _tiny_splits(test_like=1)
  negative = _tiny_splits(test_like=0)
  movielens.add_domain_statistics(positive)
  movielens.add_domain_statistics(negative)
  for name in movielens.DOMAIN_SIDE_FEATURES:
    np.testing.assert_array_equal(positive["test"][name], negative["test"][name])
    np.testing.assert_array_equal(positive["train"][name], negative["train"][name])


def test_parse_release_year_unknown():
  assert movielens.parse_release_year("1995") == 1995
  assert movielens.parse_release_year("unkonwn") == 0
  assert movielens.parse_release_year("V") == 0


def test_first_genre():
  assert movielens.first_genre("Animation Children's Comedy") == "Animation"
  assert movielens.first_genre("") == "unknown"


def test_utc_hour_and_weekday_by_hand():
  # 0 is Thursday 1970-01-01 00:00 UTC, and 881250949 is Thursday 1997-12-04 15:55:49 UTC.
  hours, weekdays = movielens.utc_hour_and_weekday(np.array([0, 881250949]))
  np.testing.assert_array_equal(hours, [0, 15])
  np.testing.assert_array_equal(weekdays, [3, 3])


def test_directors_by_item_smallest_entity():
  links = {"item_id": ["1", "2", "3"], "entity_id": ["m.a", "m.b", "m.c"]}
  kg = {
      "head_id": ["m.a", "m.b", "m.b", "m.c", "m.z"],
      "relation_id": ["film.film.directed_by", "film.film.directed_by",
                      "film.film.directed_by", "film.film.produced_by",
                      "film.film.directed_by"],
      "tail_id": ["m.d1", "m.d9", "m.d5", "m.p1", "m.d7"],
  }
  assert movielens.directors_by_item(links, kg) == {1: "m.d1", 2: "m.d5"}


def test_quantile_boundaries_sorted_distinct():
  values = np.concatenate([np.zeros(50), np.arange(50)])
  boundaries = movielens.quantile_boundaries(values, num_quantiles=10)
  assert boundaries == sorted(set(boundaries))
  assert len(boundaries) <= 9
  assert boundaries[0] == 0.0


def test_fetch_wheel_rejects_wrong_checksum(tmp_path):
  (tmp_path / movielens.WHEEL_FILENAME).write_bytes(b"not a wheel")
  with pytest.raises(movielens.DownloadError, match="SHA-256"):
    movielens.fetch_wheel(str(tmp_path))


def test_fetch_wheel_pip_failure_message(tmp_path, monkeypatch):
  def failing_run(command, **kwargs):
    del kwargs  # unused
    return subprocess.CompletedProcess(command, 1, stdout="", stderr="no network")
  monkeypatch.setattr(movielens.subprocess, "run", failing_run)
  with pytest.raises(movielens.DownloadError) as raised:
    movielens.fetch_wheel(str(tmp_path))
  message = str(raised.value)
  assert f"pip download --no-deps recbole==1.2.1 -d {tmp_path}" in message
  assert "no network" in message


def test_default_data_dir_env(monkeypatch):
  monkeypatch.setenv("PEPNET_TF_DATA_DIR", "/some/dir")
  assert movielens.default_data_dir() == "/some/dir"
  monkeypatch.delenv("PEPNET_TF_DATA_DIR")
  assert movielens.default_data_dir() == os.path.join(
      os.path.expanduser("~"), ".cache", "pepnet_tf")


# ---------------------------------------------------------------------------
# The real dataset.
# ---------------------------------------------------------------------------


def _cache_dir():
  return os.path.join(movielens.default_data_dir(), "downloads")


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("movielens_100k"))
  return movielens.prepare(path, cache_dir=_cache_dir(), seed=_SEED)


@pytest.fixture(scope="module")
def raw(out_dir):
  """The raw atomic files of the wheel as lists of string rows, header dropped."""
  del out_dir  # the fixture downloads the wheel
  tables = {}
  with zipfile.ZipFile(os.path.join(_cache_dir(), movielens.WHEEL_FILENAME)) as wheel:
    for extension in ("inter", "user", "item", "kg", "link"):
      text = wheel.read(f"recbole/dataset_example/ml-100k/ml-100k.{extension}").decode()
      tables[extension] = [line.split("\t") for line in text.splitlines()[1:] if line]
  return tables


def _read_split(path):
  spec = {name: tf.io.FixedLenFeature([], _KIND_DTYPES[kind])
          for name, kind in _COLUMN_KINDS.items()}
  parts = {name: [] for name in spec}
  for batch in tf.data.TFRecordDataset(path).batch(20000):
    parsed = tf.io.parse_example(batch, spec)
    for name, values in parsed.items():
      parts[name].append(values.numpy())
  columns = {name: np.concatenate(values) for name, values in parts.items()}
  for name, kind in _COLUMN_KINDS.items():
    if kind == "bytes_list":
      columns[name] = np.array([value.decode("utf-8") for value in columns[name]])
  return columns


@pytest.fixture(scope="module")
def records(out_dir):
  return {split: _read_split(os.path.join(out_dir, f"{split}.tfrecord"))
          for split in ("train", "valid", "test")}


@pytest.fixture(scope="module")
def ratings(raw):
  """Rating by (user_id, item_id). MovieLens-100K has one rating per pair."""
  return {(int(user), int(item)): float(rating) for user, item, rating, _ in raw["inter"]}


@pytest.fixture(scope="module")
def ages(raw):
  return {int(row[0]): int(row[1]) for row in raw["user"]}


def test_record_columns_and_kinds(out_dir):
  serialized = next(iter(tf.data.TFRecordDataset(os.path.join(out_dir, "train.tfrecord"))))
  example = tf.train.Example.FromString(serialized.numpy())
  assert set(example.features.feature) == set(_COLUMN_KINDS)
  for name, kind in _COLUMN_KINDS.items():
    feature = example.features.feature[name]
    assert feature.WhichOneof("kind") == kind, name
    assert len(getattr(feature, kind).value) == 1, name


def test_split_sizes(records):
  sizes = {split: len(columns["like"]) for split, columns in records.items()}
  assert sizes == {"train": 80000, "valid": 10000, "test": 10000}


def test_splits_partition_ratings(records, ratings):
  pairs = {split: set(zip(columns["user_id"].tolist(), columns["item_id"].tolist()))
           for split, columns in records.items()}
  assert len(pairs["train"]) == 80000
  assert not pairs["train"] & pairs["valid"]
  assert not pairs["train"] & pairs["test"]
  assert not pairs["valid"] & pairs["test"]
  assert pairs["train"] | pairs["valid"] | pairs["test"] == set(ratings)


def test_rows_follow_seeded_permutation(records, raw):
  permutation = np.random.default_rng(_SEED).permutation(len(raw["inter"]))
  for position in range(5):
    user, item, _, timestamp = raw["inter"][permutation[position]]
    assert records["train"]["user_id"][position] == int(user)
    assert records["train"]["item_id"][position] == int(item)
    assert records["train"]["timestamp"][position] == int(float(timestamp))
  first_test = raw["inter"][permutation[90000]]
  assert records["test"]["user_id"][0] == int(first_test[0])


def test_same_seed_same_outputs(out_dir, tmp_path):
  again = movielens.prepare(str(tmp_path), cache_dir=_cache_dir(), seed=_SEED)
  for name in movielens.OUTPUT_FILES:
    with open(os.path.join(out_dir, name), "rb") as first, \
        open(os.path.join(again, name), "rb") as second:
      assert first.read() == second.read(), name


def test_other_seed_other_split():
  first = movielens.split_indices(100000, _SEED)["train"]
  other = movielens.split_indices(100000, _SEED + 1)["train"]
  assert not np.array_equal(first[:100], other[:100])


def test_labels_match_ratings(records, ratings):
  for split, columns in records.items():
    stored = np.array([ratings[pair] for pair in
                       zip(columns["user_id"].tolist(), columns["item_id"].tolist())])
    np.testing.assert_array_equal(columns["like"], (stored >= 4).astype(np.int64), split)
    np.testing.assert_array_equal(columns["love"], (stored == 5).astype(np.int64), split)


def test_domain_from_raw_age(records, ages):
  # User 1 is 24 and user 2 is 53. The others are the first users of each boundary age.
  chosen = {1: 0, 2: 2}
  for age, domain in ((24, 0), (25, 1), (34, 1), (35, 2)):
    user = min(user for user, user_age in ages.items() if user_age == age)
    chosen[user] = domain
  assert ages[1] == 24
  assert ages[2] == 53

  train = records["train"]
  for user, domain in chosen.items():
    domains = set(train["domain"][train["user_id"] == user].tolist())
    assert domains == {domain}, (user, ages[user])


def test_domain_all_rows(records, ages):
  for split, columns in records.items():
    expected = [_expected_domain(ages[user]) for user in columns["user_id"].tolist()]
    np.testing.assert_array_equal(columns["domain"], expected, split)


def _expected_domain(age):
  if age < 25:
    return 0
  if age < 35:
    return 1
  return 2


def _train_table(records, ratings, ages):
  """Training rows as (item, domain, like, love) arrays, built from raw ratings and ages."""
  train = records["train"]
  pairs = list(zip(train["user_id"].tolist(), train["item_id"].tolist()))
  stored = np.array([ratings[pair] for pair in pairs])
  user_ages = np.array([ages[user] for user, _ in pairs])
  return {
      "item": train["item_id"],
      "domain": np.array([_expected_domain(age) for age in user_ages]),
      "like": (stored >= 4).astype(np.float64),
      "love": (stored == 5).astype(np.float64),
  }


def _sample_rows(item_ids):
  """First 30 rows plus 30 rows of the rarest items, where one rating moves the rate most."""
  rare = np.argsort(np.bincount(item_ids)[item_ids], kind="stable")[:30]
  return sorted(set(range(30)) | set(rare.tolist()))


def test_train_stats_leave_one_out(records, ratings, ages):
  table = _train_table(records, ratings, ages)
  train = records["train"]
  priors = {task: table[task].mean() for task in ("like", "love")}
  for row in _sample_rows(train["item_id"]):
    others = (table["item"] == table["item"][row]) & (table["domain"] == table["domain"][row])
    others[row] = False
    assert train["item_domain_count"][row] == others.sum(), row
    for task in ("like", "love"):
      expected = (table[task][others].sum() + priors[task] * _K) / (others.sum() + _K)
      np.testing.assert_allclose(train[f"item_domain_{task}_rate"][row], expected,
                                 rtol=1e-6, err_msg=f"row {row} task {task}")


def test_train_stats_exclude_own_label(records):
  # Within one (item, domain) group the leave-one-out like-rate is lower for
  # positive rows than for negative rows, by exactly 1 / (count + k).
  train = records["train"]
  keys = train["item_id"] * 3 + train["domain"]
  group = keys == np.argmax(np.bincount(keys))
  likes = train["like"][group]
  rates = train["item_domain_like_rate"][group]
  counts = train["item_domain_count"][group]
  assert 0 < likes.sum() < len(likes)
  np.testing.assert_allclose(rates[likes == 0].min() - rates[likes == 1].max(),
                             1.0 / (counts[0] + _K), atol=1e-6)
  np.testing.assert_allclose(rates[likes == 0].max() - rates[likes == 0].min(), 0.0,
                             atol=1e-6)


@pytest.mark.parametrize("split", ["valid", "test"])
def test_eval_stats_from_train_only(records, ratings, ages, split):
  table = _train_table(records, ratings, ages)
  priors = {task: table[task].mean() for task in ("like", "love")}
  columns = records[split]
  for row in _sample_rows(columns["item_id"]):
    user = int(columns["user_id"][row])
    domain = _expected_domain(ages[user])
    matching = (table["item"] == columns["item_id"][row]) & (table["domain"] == domain)
    assert columns["item_domain_count"][row] == matching.sum(), row
    for task in ("like", "love"):
      expected = (table[task][matching].sum() + priors[task] * _K) / (matching.sum() + _K)
      np.testing.assert_allclose(columns[f"item_domain_{task}_rate"][row], expected,
                                 rtol=1e-6, err_msg=f"{split} row {row} task {task}")


def test_director_from_raw_kg(records, raw):
  entity_of = {item: entity for item, entity in raw["link"]}
  directors = {}
  for head, relation, tail in raw["kg"]:
    if relation == "film.film.directed_by":
      directors.setdefault(head, []).append(tail)
  # Item 1 is Toy Story, Freebase entity m.0dyb1, directed by entity m.04jspq.
  titles = {row[0]: row[1] for row in raw["item"]}
  assert titles["1"] == "Toy Story"
  assert entity_of["1"] == "m.0dyb1"
  assert directors["m.0dyb1"] == ["m.04jspq"]
  # Item 48 links to a film with two directors, and the smaller entity id is kept.
  assert len(directors[entity_of["48"]]) == 2
  unlinked = min(int(row[0]) for row in raw["item"] if row[0] not in entity_of)

  expected = {1: "m.04jspq", 48: min(directors[entity_of["48"]]), unlinked: ""}
  for item, director in expected.items():
    found = set()
    for columns in records.values():
      found |= set(columns["director"][columns["item_id"] == item].tolist())
    assert found == {director}, item


def test_general_features_from_raw(records, raw):
  users = {int(row[0]): row for row in raw["user"]}
  items = {int(row[0]): row for row in raw["item"]}
  train = records["train"]
  for row in range(200):
    user = users[int(train["user_id"][row])]
    item = items[int(train["item_id"][row])]
    assert train["gender"][row] == user[2]
    assert train["occupation"][row] == user[3]
    assert train["zip_prefix"][row] == user[4][0]
    year = int(item[2]) if item[2].isdigit() else 0
    assert train["release_year"][row] == year
    assert train["genre"][row] == item[3].split(" ")[0]
    moment = datetime.datetime.fromtimestamp(int(train["timestamp"][row]),
                                             datetime.timezone.utc)
    assert train["hour"][row] == moment.hour
    assert train["weekday"][row] == moment.weekday()


def test_config_loads_and_matches_spec(out_dir):
  config = features_lib.load(os.path.join(out_dir, "feature_config.json"))
  assert config.name == "movielens_100k"
  assert config.format == "tfrecord"
  assert config.embedding_dim == 16
  assert config.domain.feature == "domain"
  assert config.domain.values == [0, 1, 2]
  assert config.user_id_feature == "user_id"
  assert [spec.name for spec in config.prior] == ["user_id", "item_id", "director"]
  assert [spec.name for spec in config.general] == [
      "gender", "occupation", "zip_prefix", "release_year", "genre", "hour", "weekday"]
  assert [spec.name for spec in config.domain_side] == [
      "item_domain_count", "item_domain_like_rate", "item_domain_love_rate"]
  assert config.task_names == ["like", "love"]
  assert all(spec.dtype == "int64" for spec in config.labels)
  assert "timestamp" not in [spec.name for spec in config.features]


def test_config_vocabularies_from_train(out_dir, records):
  config = features_lib.load(os.path.join(out_dir, "feature_config.json"))
  train = records["train"]
  # Unknown values map to OOV, so they are not in the vocabularies.
  unknown = {"director": {""}, "release_year": {0}}
  for spec in config.prior + config.general:
    expected = sorted(set(train[spec.name].tolist()) - unknown.get(spec.name, set()))
    assert spec.vocabulary == expected, spec.name
    assert spec.num_oov_buckets == 1, spec.name

  # Items rated only outside the training split are not in the vocabulary.
  eval_only = (set(records["valid"]["item_id"].tolist())
               | set(records["test"]["item_id"].tolist())) - set(train["item_id"].tolist())
  assert eval_only
  assert not eval_only & set(config.feature("item_id").vocabulary)


def test_config_boundaries_are_train_quantiles(out_dir, records):
  config = features_lib.load(os.path.join(out_dir, "feature_config.json"))
  for spec in config.domain_side:
    boundaries = spec.boundaries
    assert 10 <= len(boundaries) <= 19, spec.name
    assert boundaries == sorted(set(boundaries)), spec.name
    values = records["train"][spec.name]
    median = np.median(values)
    assert boundaries[0] <= median <= boundaries[-1], spec.name


def test_stats_add_up(out_dir, records):
  with open(os.path.join(out_dir, "stats.json"), encoding="utf-8") as handle:
    stats = json.load(handle)
  assert stats["seed"] == _SEED
  assert sum(stats["rows"].values()) == 100000
  for split, columns in records.items():
    entry = stats["splits"][split]
    assert entry["rows"] == stats["rows"][split] == len(columns["like"])
    assert sum(domain["rows"] for domain in entry["domains"].values()) == entry["rows"]
    for domain, value in entry["domains"].items():
      mask = columns["domain"] == int(domain)
      assert value["rows"] == mask.sum()
      for task in ("like", "love"):
        assert value["positive_rate"][task] == pytest.approx(columns[task][mask].mean(),
                                                             abs=1e-6)
    for task in ("like", "love"):
      assert entry["positive_rate"][task] == pytest.approx(columns[task].mean(), abs=1e-6)
  assert stats["prior_rate"]["like"] == stats["splits"]["train"]["positive_rate"]["like"]


def test_prepare_skips_existing_outputs(out_dir):
  config_path = os.path.join(out_dir, "feature_config.json")
  before = os.stat(config_path).st_mtime_ns
  assert movielens.prepare(out_dir, cache_dir=_cache_dir(), seed=_SEED) == out_dir
  assert os.stat(config_path).st_mtime_ns == before


def test_prepare_rejects_other_seed_on_existing(out_dir):
  with pytest.raises(ValueError, match="seed 2023, not 7"):
    movielens.prepare(out_dir, cache_dir=_cache_dir(), seed=7)


def test_cli_prints_summary(out_dir):
  result = subprocess.run(
      [sys.executable, "-m", "data.movielens", f"--out_dir={out_dir}",
       f"--cache_dir={_cache_dir()}"],
      cwd=_REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "movielens_100k (seed 2023): train 80000, valid 10000, test 10000 rows" in result.stdout
  assert "train  2 age 35+" in result.stdout
