"""Tests of the MovieLens-100K pass layout on small hand-made ratings.

Nothing here downloads. The ratings are built in the tests, passed to
`movielens.prepare_passes(columns=...)`, and the expected periods, splits and
statistics are computed by hand in the comments. The command-line tests run a
small launcher that swaps the wheel loading for the same hand-made ratings.
"""

import datetime
import json
import os
import subprocess
import sys

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import pytest
import tensorflow as tf

from data import movielens
from pepnet_tf import features as features_lib

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DAY = 86400
# Day 10000 after 1970-01-01 is Monday 1997-05-19.
_FIRST_DAY = 10000
_T0 = _FIRST_DAY * _DAY
_K = 10.0

# The columns every record must have, with the tf.train.Feature list kind. They are
# those of the random-split dataset (see tests/test_movielens_data.py).
_COLUMN_KINDS = {
    "user_id": "int64_list", "item_id": "int64_list", "director": "bytes_list",
    "gender": "bytes_list", "occupation": "bytes_list", "zip_prefix": "bytes_list",
    "release_year": "int64_list", "genre": "bytes_list", "hour": "int64_list",
    "weekday": "int64_list", "domain": "int64_list", "item_domain_count": "float_list",
    "item_domain_like_rate": "float_list", "item_domain_love_rate": "float_list",
    "timestamp": "int64_list", "like": "int64_list", "love": "int64_list",
}
_KIND_DTYPES = {"int64_list": tf.int64, "float_list": tf.float32, "bytes_list": tf.string}
_STATISTICS = ("item_domain_count", "item_domain_like_rate", "item_domain_love_rate")


def _ratings(rows):
  """Build `load_ratings`-style columns from (timestamp, user, item, domain, like, love)."""
  timestamps, users, items, domains, likes, loves = (np.array(values) for values in zip(*rows))
  num_rows = len(rows)
  return {
      "user_id": users.astype(np.int64),
      "item_id": items.astype(np.int64),
      "director": np.array([f"m.d{item}" for item in items.tolist()]),
      "gender": np.array(["F" if user % 2 else "M" for user in users.tolist()]),
      "occupation": np.full(num_rows, "writer"),
      "zip_prefix": np.full(num_rows, "5"),
      "release_year": np.full(num_rows, 1995, dtype=np.int64),
      "genre": np.full(num_rows, "Drama"),
      "hour": (timestamps.astype(np.int64) % _DAY) // 3600,
      "weekday": np.zeros(num_rows, dtype=np.int64),
      "domain": domains.astype(np.int64),
      "timestamp": timestamps.astype(np.int64),
      "like": likes.astype(np.int64),
      "love": loves.astype(np.int64),
  }


# Ratings A to F, listed out of time order. Period 0 is days 0-6, period 1 days 7-13,
# period 2 (days 14-20) is empty and period 3 is days 21-27.
_HAND_ROWS = {
    "D": (_T0 + 7 * _DAY, 4, 7, 0, 1, 0),            # first second of period 1
    "A": (_T0 + 5 * 3600, 1, 7, 0, 1, 1),
    "F": (_T0 + 22 * _DAY, 1, 7, 0, 0, 0),
    "B": (_T0 + 2 * _DAY, 2, 7, 0, 0, 0),
    "C": (_T0 + 7 * _DAY - 1, 3, 8, 1, 1, 0),        # last second of period 0
    "E": (_T0 + 10 * _DAY, 3, 7, 1, 0, 0),
}


def _hand_ratings(**changes):
  rows = dict(_HAND_ROWS)
  rows.update(changes)
  return _ratings(list(rows.values()))


def _random_ratings(num_rows=90, seed=5):
  """Ratings with distinct timestamps over days 0-24 (periods 0-3), the first at 03:00."""
  rng = np.random.default_rng(seed)
  offsets = rng.choice(24 * _DAY - 1, size=num_rows - 1, replace=False) + 1
  seconds = np.concatenate([[0], offsets])
  return _ratings([(_T0 + 3 * 3600 + int(second), int(rng.integers(1, 6)),
                    int(rng.integers(1, 8)), int(rng.integers(0, 3)),
                    int(rng.integers(0, 2)), int(rng.integers(0, 2)))
                   for second in seconds])


def _read_split(path):
  spec = {name: tf.io.FixedLenFeature([], _KIND_DTYPES[kind])
          for name, kind in _COLUMN_KINDS.items()}
  parts = {name: [] for name in spec}
  for batch in tf.data.TFRecordDataset(path).batch(1000):
    parsed = tf.io.parse_example(batch, spec)
    for name, values in parsed.items():
      parts[name].append(values.numpy())
  return {name: np.concatenate(values) if values else np.zeros(0)
          for name, values in parts.items()}


def _read_pass(out_dir, name):
  return {split: _read_split(os.path.join(out_dir, name, f"{split}.tfrecord"))
          for split in ("train", "valid", "test")}


def _by_timestamp(columns, feature):
  return dict(zip(columns["timestamp"].tolist(), columns[feature].tolist()))


def _iso(day):
  return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def _load_manifest(out_dir):
  with open(os.path.join(out_dir, "passes.json"), encoding="utf-8") as handle:
    return json.load(handle)


# ---------------------------------------------------------------------------
# Periods and splits.
# ---------------------------------------------------------------------------


def test_assign_periods_by_hand():
  timestamps = np.array([_T0 + 3600, _T0 + 7 * _DAY - 1, _T0 + 7 * _DAY,
                         _T0 + 20 * _DAY, _T0 + 35 * _DAY + 5])
  periods, t0 = movielens.assign_periods(timestamps, pass_days=7)
  # t0 is the midnight before the first rating, not the rating itself.
  assert t0 == _T0
  np.testing.assert_array_equal(periods, [0, 0, 1, 2, 5])
  periods, _ = movielens.assign_periods(timestamps, pass_days=1)
  np.testing.assert_array_equal(periods, [0, 6, 7, 20, 35])


def test_merge_empty_periods_into_next():
  merged, windows = movielens.merge_empty_periods(np.array([0, 0, 1, 2, 5]), _T0, 7)
  np.testing.assert_array_equal(merged, [0, 0, 1, 2, 3])
  week = 7 * _DAY
  # Periods 3 and 4 have no rows, so the last window runs from period 3 to period 5.
  assert windows == [(_T0, _T0 + week), (_T0 + week, _T0 + 2 * week),
                     (_T0 + 2 * week, _T0 + 3 * week), (_T0 + 3 * week, _T0 + 6 * week)]


def test_split_pass_rows_disjoint_complete():
  for num_rows, fraction in ((1, 0.1), (10, 0.1), (37, 0.25), (50, 0.0), (9, 0.99)):
    train, valid = movielens.split_pass_rows(num_rows, fraction, seed=3, pass_index=2)
    assert len(valid) == int(num_rows * fraction), (num_rows, fraction)
    assert not set(train.tolist()) & set(valid.tolist())
    assert sorted(train.tolist() + valid.tolist()) == list(range(num_rows))
    assert train.tolist() == sorted(train.tolist())


def test_split_pass_rows_differs_by_pass():
  _, first = movielens.split_pass_rows(1000, 0.1, seed=3, pass_index=0)
  _, second = movielens.split_pass_rows(1000, 0.1, seed=3, pass_index=1)
  _, again = movielens.split_pass_rows(1000, 0.1, seed=3, pass_index=0)
  assert first.tolist() != second.tolist()
  assert first.tolist() == again.tolist()


# ---------------------------------------------------------------------------
# Layout on the hand-made ratings A to F.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hand_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("hand_passes"))
  movielens.prepare_passes(path, pass_days=7, valid_fraction=0.0, seed=11,
                           columns=_hand_ratings())
  return path


def test_manifest_by_hand(hand_dir):
  manifest = _load_manifest(hand_dir)
  assert manifest["dataset"] == "movielens_100k"
  assert manifest["pass_days"] == 7
  assert manifest["seed"] == 11
  assert manifest["valid_fraction"] == 0.0
  # Period 2 is empty and merges into period 3, which is only a test set.
  assert manifest["passes"] == [
      {"name": "pass_001", "start": _iso(_FIRST_DAY), "end": _iso(_FIRST_DAY + 7),
       "test_start": _iso(_FIRST_DAY + 7), "test_end": _iso(_FIRST_DAY + 14),
       "train_rows": 3, "valid_rows": 0, "test_rows": 2},
      {"name": "pass_002", "start": _iso(_FIRST_DAY + 7), "end": _iso(_FIRST_DAY + 14),
       "test_start": _iso(_FIRST_DAY + 14), "test_end": _iso(_FIRST_DAY + 28),
       "train_rows": 2, "valid_rows": 0, "test_rows": 1},
  ]
  assert _iso(_FIRST_DAY) == "1997-05-19"
  assert sorted(os.listdir(hand_dir)) == [
      "feature_config.json", "pass_001", "pass_002", "passes.json"]


def test_rows_by_period_in_time_order(hand_dir):
  stamp = {name: row[0] for name, row in _HAND_ROWS.items()}
  first = _read_pass(hand_dir, "pass_001")
  second = _read_pass(hand_dir, "pass_002")
  assert first["train"]["timestamp"].tolist() == [stamp["A"], stamp["B"], stamp["C"]]
  assert first["test"]["timestamp"].tolist() == [stamp["D"], stamp["E"]]
  assert second["train"]["timestamp"].tolist() == [stamp["D"], stamp["E"]]
  assert second["test"]["timestamp"].tolist() == [stamp["F"]]
  assert len(first["valid"]["timestamp"]) == 0


def test_record_columns_and_kinds(hand_dir):
  path = os.path.join(hand_dir, "pass_001", "train.tfrecord")
  example = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(path))).numpy())
  assert set(example.features.feature) == set(_COLUMN_KINDS)
  for name, kind in _COLUMN_KINDS.items():
    feature = example.features.feature[name]
    assert feature.WhichOneof("kind") == kind, name
    assert len(getattr(feature, kind).value) == 1, name


def test_first_pass_statistics_by_hand(hand_dir):
  first = _read_pass(hand_dir, "pass_001")
  stamp = {name: row[0] for name, row in _HAND_ROWS.items()}
  # History: A, B, C. Priors: like 2/3, love 1/3, so prior * k is 20/3 and 10/3.
  train = first["train"]
  count = _by_timestamp(train, "item_domain_count")
  like = _by_timestamp(train, "item_domain_like_rate")
  love = _by_timestamp(train, "item_domain_love_rate")
  # A counts only B in (item 7, domain 0): 0 likes, 0 loves.
  assert count[stamp["A"]] == 1
  assert like[stamp["A"]] == pytest.approx((0 + 20 / 3) / 11, rel=1e-6)
  assert love[stamp["A"]] == pytest.approx((0 + 10 / 3) / 11, rel=1e-6)
  # B counts only A: 1 like, 1 love.
  assert count[stamp["B"]] == 1
  assert like[stamp["B"]] == pytest.approx((1 + 20 / 3) / 11, rel=1e-6)
  assert love[stamp["B"]] == pytest.approx((1 + 10 / 3) / 11, rel=1e-6)
  # C is alone in (item 8, domain 1) and gets the priors.
  assert count[stamp["C"]] == 0
  assert like[stamp["C"]] == pytest.approx(2 / 3, rel=1e-6)
  assert love[stamp["C"]] == pytest.approx(1 / 3, rel=1e-6)

  # Test rows of period 1 count A, B and C only, because D, E and F are later rows.
  test = first["test"]
  count = _by_timestamp(test, "item_domain_count")
  like = _by_timestamp(test, "item_domain_like_rate")
  love = _by_timestamp(test, "item_domain_love_rate")
  assert count[stamp["D"]] == 2
  assert like[stamp["D"]] == pytest.approx((1 + 20 / 3) / 12, rel=1e-6)
  assert love[stamp["D"]] == pytest.approx((1 + 10 / 3) / 12, rel=1e-6)
  assert count[stamp["E"]] == 0
  assert like[stamp["E"]] == pytest.approx(2 / 3, rel=1e-6)


def test_second_pass_statistics_by_hand(hand_dir):
  second = _read_pass(hand_dir, "pass_002")
  stamp = {name: row[0] for name, row in _HAND_ROWS.items()}
  # History: A, B, C, D, E. Priors: like 3/5, love 1/5, so prior * k is 6 and 2.
  train = second["train"]
  count = _by_timestamp(train, "item_domain_count")
  like = _by_timestamp(train, "item_domain_like_rate")
  love = _by_timestamp(train, "item_domain_love_rate")
  # D leaves itself out and counts A and B of pass 1: 1 like, 1 love.
  assert count[stamp["D"]] == 2
  assert like[stamp["D"]] == pytest.approx((1 + 6) / 12, rel=1e-6)
  assert love[stamp["D"]] == pytest.approx((1 + 2) / 12, rel=1e-6)
  # E is alone in (item 7, domain 1).
  assert count[stamp["E"]] == 0
  assert like[stamp["E"]] == pytest.approx(3 / 5, rel=1e-6)
  assert love[stamp["E"]] == pytest.approx(1 / 5, rel=1e-6)

  # F counts A, B and D: 2 likes, 1 love.
  test = second["test"]
  assert test["item_domain_count"].tolist() == [3]
  assert test["item_domain_like_rate"][0] == pytest.approx((2 + 6) / 13, rel=1e-6)
  assert test["item_domain_love_rate"][0] == pytest.approx((1 + 2) / 13, rel=1e-6)


def test_statistics_ignore_later_periods(hand_dir, tmp_path):
  # F is flipped to a loved rating and one more period-3 rating of item 7 is added.
  # Pass 1 reads no row of periods 2 and 3, so none of its files may change.
  changed = _hand_ratings(F=(_T0 + 22 * _DAY, 1, 7, 0, 1, 1),
                          G=(_T0 + 23 * _DAY, 5, 7, 0, 1, 1))
  movielens.prepare_passes(str(tmp_path), pass_days=7, valid_fraction=0.0, seed=11,
                           columns=changed)
  original = _read_pass(hand_dir, "pass_001")
  again = _read_pass(str(tmp_path), "pass_001")
  for split in ("train", "test"):
    for name in _STATISTICS:
      np.testing.assert_array_equal(again[split][name], original[split][name],
                                    err_msg=f"{split} {name}")
  # Pass 2's training rows are in period 1 and do not change either.
  for name in _STATISTICS:
    np.testing.assert_array_equal(_read_pass(str(tmp_path), "pass_002")["train"][name],
                                  _read_pass(hand_dir, "pass_002")["train"][name], name)


# ---------------------------------------------------------------------------
# Layout on random ratings with a validation share.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("random_passes"))
  movielens.prepare_passes(path, pass_days=7, valid_fraction=0.3, seed=4,
                           columns=_random_ratings())
  return path


def test_passes_partition_periods(random_dir):
  ratings = _random_ratings()
  period_of = {stamp: (stamp - _T0) // (7 * _DAY) for stamp in ratings["timestamp"].tolist()}
  # With 90 ratings over days 0-24, each of the periods 0-3 has rows.
  assert set(period_of.values()) == {0, 1, 2, 3}
  entries = _load_manifest(random_dir)["passes"]
  assert [entry["name"] for entry in entries] == ["pass_001", "pass_002", "pass_003"]

  for index, entry in enumerate(entries):
    splits = _read_pass(random_dir, entry["name"])
    train = set(splits["train"]["timestamp"].tolist())
    valid = set(splits["valid"]["timestamp"].tolist())
    test = set(splits["test"]["timestamp"].tolist())
    period = {stamp for stamp, value in period_of.items() if value == index}
    following = {stamp for stamp, value in period_of.items() if value == index + 1}
    assert not train & valid, entry["name"]
    assert train | valid == period, entry["name"]
    assert len(valid) == int(len(period) * 0.3), entry["name"]
    assert test == following, entry["name"]
    assert entry["train_rows"] == len(train)
    assert entry["valid_rows"] == len(valid)
    assert entry["test_rows"] == len(test)
    assert entry["start"] == _iso(_FIRST_DAY + 7 * index)
    assert entry["test_end"] == _iso(_FIRST_DAY + 7 * (index + 2))


def test_random_passes_statistics_cumulative(random_dir):
  # Statistics of pass k, recomputed from the training files of passes 1 .. k.
  entries = _load_manifest(random_dir)["passes"]
  history = {"item_id": [], "domain": [], "like": [], "love": []}
  for entry in entries:
    splits = _read_pass(random_dir, entry["name"])
    for name in history:
      history[name].extend(splits["train"][name].tolist())
    items = np.array(history["item_id"])
    domains = np.array(history["domain"])
    priors = {task: np.mean(history[task]) for task in ("like", "love")}
    for split, columns in splits.items():
      for row in range(len(columns["timestamp"])):
        same = (items == columns["item_id"][row]) & (domains == columns["domain"][row])
        count = same.sum() - (1 if split == "train" else 0)
        assert columns["item_domain_count"][row] == count, (entry["name"], split, row)
        for task in ("like", "love"):
          positives = np.array(history[task])[same].sum()
          if split == "train":
            positives -= columns[task][row]
          expected = (positives + priors[task] * _K) / (count + _K)
          assert columns[f"item_domain_{task}_rate"][row] == pytest.approx(
              expected, rel=1e-6), (entry["name"], split, row, task)


def test_valid_rows_keep_labels(random_dir):
  ratings = _random_ratings()
  likes = _by_timestamp(ratings, "like")
  users = _by_timestamp(ratings, "user_id")
  for entry in _load_manifest(random_dir)["passes"]:
    for split, columns in _read_pass(random_dir, entry["name"]).items():
      for stamp, like in _by_timestamp(columns, "like").items():
        assert like == likes[stamp], (entry["name"], split, stamp)
      for stamp, user in _by_timestamp(columns, "user_id").items():
        assert user == users[stamp], (entry["name"], split, stamp)


# ---------------------------------------------------------------------------
# Feature config.
# ---------------------------------------------------------------------------


def test_config_admits_ids_from_counts(hand_dir):
  config = features_lib.load(os.path.join(hand_dir, "feature_config.json"))
  assert config.needs_admission
  assert [spec.name for spec in config.prior] == ["user_id", "item_id", "director"]
  for spec in config.prior:
    assert spec.min_frequency == 2, spec.name
    assert spec.num_oov_buckets == 4, spec.name
    assert spec.vocabulary is None, spec.name
  assert [spec.name for spec in config.general] == [
      "gender", "occupation", "zip_prefix", "release_year", "genre", "hour", "weekday"]
  for spec in config.general:
    assert spec.min_frequency == 1, spec.name
    assert spec.vocabulary is None, spec.name
    assert spec.vocabulary_file is None, spec.name


def test_config_fixed_boundaries(hand_dir):
  config = features_lib.load(os.path.join(hand_dir, "feature_config.json"))
  boundaries = {spec.name: spec.boundaries for spec in config.domain_side}
  assert boundaries["item_domain_count"] == [
      1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
  rates = [step / 20 for step in range(1, 20)]
  for name in ("item_domain_like_rate", "item_domain_love_rate"):
    assert len(boundaries[name]) == 19, name
    np.testing.assert_allclose(boundaries[name], rates, err_msg=name)


def test_config_same_for_any_data(hand_dir, random_dir, tmp_path):
  movielens.prepare_passes(str(tmp_path), pass_days=3, valid_fraction=0.5, seed=9,
                           columns=_random_ratings(num_rows=40, seed=8))
  contents = []
  for directory in (hand_dir, random_dir, str(tmp_path)):
    with open(os.path.join(directory, "feature_config.json"), encoding="utf-8") as handle:
      contents.append(handle.read())
  assert contents[0] == contents[1]
  assert contents[0] == contents[2]


def test_config_matches_default_schema():
  ratings = _random_ratings()
  default = movielens.build_feature_config(
      {**ratings, **{name: np.zeros(len(ratings["domain"])) for name in _STATISTICS}})
  passes = movielens.build_pass_feature_config()

  def schema(config):
    return [(spec.name, spec.group, spec.dtype) for spec in config.features]

  assert schema(passes) == schema(default)
  assert passes.domain == default.domain
  assert passes.user_id_feature == default.user_id_feature


def test_config_id_settings():
  config = movielens.build_pass_feature_config(id_min_frequency=5, id_num_oov_buckets=2)
  assert [spec.min_frequency for spec in config.prior] == [5, 5, 5]
  assert [spec.num_oov_buckets for spec in config.prior] == [2, 2, 2]


# ---------------------------------------------------------------------------
# Reruns, bad input and interrupted runs.
# ---------------------------------------------------------------------------


def test_rerun_same_settings_skips(tmp_path):
  out_dir = str(tmp_path)
  movielens.prepare_passes(out_dir, seed=1, columns=_hand_ratings())
  manifest_path = os.path.join(out_dir, "passes.json")
  before = os.stat(manifest_path).st_mtime_ns
  manifest = movielens.prepare_passes(out_dir, seed=1, columns=_random_ratings())
  assert os.stat(manifest_path).st_mtime_ns == before
  assert [entry["train_rows"] + entry["valid_rows"] for entry in manifest["passes"]] == [3, 2]


@pytest.mark.parametrize("changes, message", [
    ({"seed": 2}, "seed 1, not 2"),
    ({"pass_days": 3}, "pass_days 7, not 3"),
    ({"valid_fraction": 0.2}, "valid_fraction 0.1, not 0.2"),
    ({"id_min_frequency": 3}, "another feature config"),
])
def test_rerun_other_settings_rejected(tmp_path, changes, message):
  out_dir = str(tmp_path)
  movielens.prepare_passes(out_dir, seed=1, columns=_hand_ratings())
  arguments = {"seed": 1, **changes}
  with pytest.raises(ValueError, match=message):
    movielens.prepare_passes(out_dir, columns=_hand_ratings(), **arguments)


def test_force_rebuild_removes_stale_passes(tmp_path):
  out_dir = str(tmp_path)
  movielens.prepare_passes(out_dir, pass_days=1, valid_fraction=0.0, seed=1,
                           columns=_hand_ratings())
  # The ratings fall on days 0, 2, 6, 7, 10 and 22: 6 periods, so 5 passes.
  assert len(_load_manifest(out_dir)["passes"]) == 5
  notes = os.path.join(out_dir, "pass_005", "notes.txt")
  with open(notes, "w", encoding="utf-8") as handle:
    handle.write("kept\n")

  movielens.prepare_passes(out_dir, pass_days=7, valid_fraction=0.0, seed=1,
                           columns=_hand_ratings(), force=True)
  manifest = _load_manifest(out_dir)
  assert manifest["pass_days"] == 7
  assert [entry["name"] for entry in manifest["passes"]] == ["pass_001", "pass_002"]
  assert not os.path.exists(os.path.join(out_dir, "pass_003"))
  assert not os.path.exists(os.path.join(out_dir, "pass_004"))
  # A file that the module did not write stays, and so does its directory.
  assert os.listdir(os.path.join(out_dir, "pass_005")) == ["notes.txt"]


def test_rejects_random_split_dir(tmp_path):
  (tmp_path / "stats.json").write_text("{}")
  with pytest.raises(ValueError, match="stats.json of the random-split dataset"):
    movielens.prepare_passes(str(tmp_path), columns=_hand_ratings())
  movielens.prepare_passes(str(tmp_path), columns=_hand_ratings(), force=True)
  assert (tmp_path / "passes.json").exists()


@pytest.mark.parametrize("arguments, message", [
    ({"pass_days": 0}, "pass_days must be an integer >= 1. Received: 0"),
    ({"pass_days": -7}, "pass_days must be an integer >= 1"),
    ({"pass_days": 1.5}, "pass_days must be an integer >= 1"),
    ({"valid_fraction": 1.0}, r"valid_fraction must be a number in \[0, 1\). Received: 1.0"),
    ({"valid_fraction": -0.1}, r"valid_fraction must be a number in \[0, 1\)"),
    ({"id_num_oov_buckets": 0}, "id_num_oov_buckets must be an integer >= 1"),
])
def test_invalid_arguments_rejected(tmp_path, arguments, message):
  with pytest.raises(ValueError, match=message):
    movielens.prepare_passes(str(tmp_path), columns=_hand_ratings(), **arguments)
  assert not os.listdir(tmp_path)


def test_single_period_rejected(tmp_path):
  with pytest.raises(ValueError, match="one period of 30 days"):
    movielens.prepare_passes(str(tmp_path), pass_days=30, columns=_hand_ratings())
  assert not (tmp_path / "passes.json").exists()


def test_interrupted_run_leaves_no_layout(tmp_path, monkeypatch):
  out_dir = str(tmp_path)
  movielens.prepare_passes(out_dir, seed=1, columns=_hand_ratings())
  calls = []
  original = movielens.write_tfrecord

  def failing_write(path, columns):
    calls.append(path)
    if len(calls) == 4:
      raise OSError("disk full")
    original(path, columns)

  monkeypatch.setattr(movielens, "write_tfrecord", failing_write)
  with pytest.raises(OSError, match="disk full"):
    movielens.prepare_passes(out_dir, seed=1, columns=_random_ratings(), force=True)
  # The old manifest is gone and no new one was written, so no reader takes the
  # half-written directory for a complete layout.
  assert not os.path.exists(os.path.join(out_dir, "passes.json"))
  monkeypatch.setattr(movielens, "write_tfrecord", original)
  movielens.prepare_passes(out_dir, seed=1, columns=_random_ratings())
  assert len(_load_manifest(out_dir)["passes"]) == 3


# ---------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------

# Runs `data.movielens` as `python -m data.movielens` does, with the wheel loading
# replaced by the ratings saved in $SYNTHETIC_RATINGS.
_LAUNCHER = """
import os

from absl import app
import numpy as np

from data import movielens

_RATINGS = dict(np.load(os.environ["SYNTHETIC_RATINGS"]))
movielens.fetch_wheel = lambda cache_dir: "synthetic ratings"
movielens.load_ratings = lambda path: dict(_RATINGS)
movielens._define_flags()
app.run(movielens.main)
"""


def _run_cli(tmp_path, arguments, ratings=None):
  command = [sys.executable, "-m", "data.movielens"]
  env = dict(os.environ)
  if ratings is not None:
    np.savez(tmp_path / "ratings.npz", **ratings)
    (tmp_path / "launcher.py").write_text(_LAUNCHER)
    command = [sys.executable, str(tmp_path / "launcher.py")]
    env["SYNTHETIC_RATINGS"] = str(tmp_path / "ratings.npz")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
  return subprocess.run(command + arguments, cwd=_REPO_ROOT, env=env, capture_output=True,
                        text=True, check=False, timeout=300)


def test_cli_passes_writes_layout(tmp_path):
  out_dir = tmp_path / "passes"
  result = _run_cli(tmp_path, ["passes", f"--out={out_dir}", "--valid_fraction=0.3",
                               "--seed=4"], ratings=_random_ratings())
  assert result.returncode == 0, result.stderr[-2000:]
  manifest = _load_manifest(str(out_dir))
  assert manifest["seed"] == 4
  assert manifest["valid_fraction"] == 0.3
  assert len(manifest["passes"]) == 3
  assert "movielens_100k: 3 passes of 7 days" in result.stdout
  first = manifest["passes"][0]
  assert (f"pass_001  {_iso(_FIRST_DAY)} {_iso(_FIRST_DAY + 7)} "
          f"{first['train_rows']:>6} {first['valid_rows']:>6}") in result.stdout


def test_cli_default_command_unchanged(tmp_path):
  out_dir = tmp_path / "default"
  result = _run_cli(tmp_path, [f"--out_dir={out_dir}"], ratings=_random_ratings())
  assert result.returncode == 0, result.stderr[-2000:]
  # 90 ratings split 8:1:1 are 72, 9 and 9 rows.
  assert "movielens_100k (seed 2023): train 72, valid 9, test 9 rows" in result.stdout
  for name in ("train.tfrecord", "valid.tfrecord", "test.tfrecord", "feature_config.json",
               "stats.json"):
    assert (out_dir / name).exists(), name
  assert not (out_dir / "passes.json").exists()


def test_cli_rejects_bad_pass_days(tmp_path):
  result = _run_cli(tmp_path, ["passes", f"--out={tmp_path / 'out'}", "--pass_days=0"])
  assert result.returncode == 1
  assert "pass_days must be an integer >= 1. Received: 0" in result.stderr
  assert not (tmp_path / "out").exists()


def test_cli_default_rejects_pass_flags(tmp_path):
  result = _run_cli(tmp_path, [f"--out_dir={tmp_path / 'out'}", "--pass_days=3"])
  assert result.returncode != 0
  assert "Only the 'passes' command reads --pass_days" in result.stderr
  assert not (tmp_path / "out").exists()
