"""Tests of the KuaiRand-Pure downloader and converter.

The converter runs on a log fixture that the tests generate: a few thousand seeded
rows in the published column order. Its user and video ids are real ids of the
published feature tables plus a few unknown ones, and the converter joins the real
tables. The tables are
read from $PEPNET_TF_KUAIRAND_TABLES, by default `../shared/data/kuairand` beside the
repository; tests that need them are skipped when they are absent. Expected values
are recomputed here from the generated rows, independently of `data.kuairand`.

The downloader runs against an HTTP server on 127.0.0.1 started by the tests, which
serves a small tar.gz built here. No other host is contacted.
"""

import collections
import csv
import glob
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import threading

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import pytest
import tensorflow as tf

from data import kuairand
from pepnet_tf import features as features_lib

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TABLES_DIR = os.environ.get(
    "PEPNET_TF_KUAIRAND_TABLES", os.path.join(_REPO_ROOT, "..", "shared", "data", "kuairand"))

# The published header of the three KuaiRand-Pure logs, in its order.
_LOG_HEADER = (
    "user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,"
    "is_forward,is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,"
    "comment_stay_time,is_profile_enter,is_rand,tab").split(",")
_TASKS = ("is_click", "is_like", "is_follow", "is_comment", "is_forward", "long_view")
_K = 10.0

# Tab of the fixture -> share of the standard-log rows.
_TAB_SHARES = {0: 0.50, 1: 0.28, 2: 0.14, 4: 0.065, 6: 0.015}
# A tab that appears only in test-period rows, never in training.
_UNSEEN_TAB = 11
_UNSEEN_TAB_ROWS = 5
_NUM_STANDARD_ROWS = 4000
_NUM_RANDOM_ROWS = 1000
_UNKNOWN_USERS = (90000001, 90000002)
_UNKNOWN_VIDEOS = (91000001, 91000002)
_TRAIN_END, _VALID_END = 20220428, 20220503

_DAYS_FIRST = [20220400 + day for day in range(8, 22)]
_DAYS_SECOND = [20220400 + day for day in range(22, 31)] + [20220500 + day for day in range(1, 9)]


def _tables_or_skip():
  for name in (kuairand.USER_TABLE, kuairand.VIDEO_TABLE):
    if not os.path.exists(os.path.join(_TABLES_DIR, name)):
      pytest.skip(f"{name} not found in {_TABLES_DIR}; set PEPNET_TF_KUAIRAND_TABLES to the "
                  "folder with the KuaiRand-Pure feature tables.")
  return _TABLES_DIR


def _read_table(name):
  with open(os.path.join(_TABLES_DIR, name), newline="", encoding="utf-8") as handle:
    return {int(row[next(iter(row))]): row for row in csv.DictReader(handle)}


# ---------------------------------------------------------------------------
# Log fixture.
# ---------------------------------------------------------------------------


def _generate_rows(rng, num_rows, days, users, videos, tab_shares, is_rand):
  """Seeded log rows as dicts of ints, with realistic label rates."""
  tabs = list(tab_shares)
  shares = np.array(list(tab_shares.values()))
  user_click = {user: float(rng.beta(4, 7)) for user in users}
  rows = []
  for _ in range(num_rows):
    user = int(rng.choice(users))
    click = int(rng.random() < user_click[user])
    duration = int(rng.integers(5_000, 120_000))
    long_view = int(rng.random() < (0.55 if click else 0.2))
    rows.append({
        "user_id": user,
        "video_id": int(rng.choice(videos)),
        "date": int(rng.choice(days)),
        "hourmin": int(rng.integers(0, 24)) * 100 + int(rng.integers(0, 60)),
        "is_click": click,
        "is_like": int(click and rng.random() < 0.045),
        "is_follow": int(click and rng.random() < 0.015),
        "is_comment": int(click and rng.random() < 0.012),
        "is_forward": int(click and rng.random() < 0.01),
        "is_hate": int(rng.random() < 0.001),
        "long_view": long_view,
        "play_time_ms": int(duration * rng.random() * (1.5 if long_view else 0.4)),
        "duration_ms": duration,
        "profile_stay_time": int(rng.integers(0, 30)) if rng.random() < 0.05 else 0,
        "comment_stay_time": int(rng.integers(0, 30)) if rng.random() < 0.02 else 0,
        "is_profile_enter": int(rng.random() < 0.05),
        "is_rand": is_rand,
        "tab": int(tabs[rng.choice(len(tabs), p=shares / shares.sum())]),
    })
  return rows


def _add_times(rows, first_index):
  """Sort rows by time and give each a unique time_ms."""
  rows.sort(key=lambda row: (row["date"], row["hourmin"]))
  for index, row in enumerate(rows, start=first_index):
    day = np.datetime64(f"{row['date'] // 10000}-{row['date'] // 100 % 100:02d}-"
                        f"{row['date'] % 100:02d}")
    minutes = row["hourmin"] // 100 * 60 + row["hourmin"] % 100
    row["time_ms"] = int(day.astype("datetime64[ms]").astype(np.int64)) + minutes * 60_000 + index


def _write_log(path, rows):
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(_LOG_HEADER)
    for row in rows:
      writer.writerow([row[name] for name in _LOG_HEADER])


def _make_fixture(src, seed=7):
  """Write the three logs under src/KuaiRand-Pure/data and copy the tables to src.

  Returns:
    `{"standard": [rows in file order], "random": [rows]}`.
  """
  rng = np.random.default_rng(seed)
  users = sorted(_read_table(kuairand.USER_TABLE))
  videos = sorted(_read_table(kuairand.VIDEO_TABLE))
  chosen_users = [int(user) for user in rng.choice(users, 120, replace=False)]
  chosen_videos = [int(video) for video in rng.choice(videos, 250, replace=False)]

  first_share = len(_DAYS_FIRST) / (len(_DAYS_FIRST) + len(_DAYS_SECOND))
  num_first = int(_NUM_STANDARD_ROWS * first_share)
  first = _generate_rows(rng, num_first, _DAYS_FIRST, chosen_users, chosen_videos,
                         _TAB_SHARES, 0)
  second = _generate_rows(rng, _NUM_STANDARD_ROWS - num_first - _UNSEEN_TAB_ROWS,
                          _DAYS_SECOND, chosen_users, chosen_videos, _TAB_SHARES, 0)
  second += _generate_rows(rng, _UNSEEN_TAB_ROWS, [20220506], chosen_users, chosen_videos,
                           {_UNSEEN_TAB: 1.0}, 0)
  random_rows = _generate_rows(rng, _NUM_RANDOM_ROWS, _DAYS_SECOND, chosen_users,
                               chosen_videos, _TAB_SHARES, 1)
  # A few rows per file with ids missing from the feature tables.
  for rows in (first, second, random_rows):
    for offset, user in enumerate(_UNKNOWN_USERS * 3):
      rows[offset * 37 % len(rows)]["user_id"] = user
    for offset, video in enumerate(_UNKNOWN_VIDEOS * 3):
      rows[(offset * 53 + 11) % len(rows)]["video_id"] = video
  _add_times(first, 0)
  _add_times(second, 10_000)
  _add_times(random_rows, 20_000)

  data_dir = os.path.join(src, "KuaiRand-Pure", "data")
  os.makedirs(data_dir)
  _write_log(os.path.join(data_dir, kuairand.STANDARD_LOGS[0]), first)
  _write_log(os.path.join(data_dir, kuairand.STANDARD_LOGS[1]), second)
  _write_log(os.path.join(data_dir, kuairand.RANDOM_LOG), random_rows)
  for name in (kuairand.USER_TABLE, kuairand.VIDEO_TABLE):
    shutil.copy(os.path.join(_TABLES_DIR, name), src)
  return {"standard": first + second, "random": random_rows}


def _date_split(row):
  if row["date"] <= _TRAIN_END:
    return "train"
  return "valid" if row["date"] <= _VALID_END else "test"


def _read_records(out_dir, split):
  """Every record of a split's shards as a dict of Python values."""
  paths = sorted(glob.glob(os.path.join(out_dir, f"{split}-*.tfrecord")))
  records = []
  for serialized in tf.data.TFRecordDataset(paths).as_numpy_iterator():
    example = tf.train.Example.FromString(serialized)
    record = {}
    for name, feature in example.features.feature.items():
      kind = feature.WhichOneof("kind")
      value = getattr(feature, kind).value[0]
      record[name] = value.decode() if kind == "bytes_list" else value
    records.append(record)
  return records


def _by_time(records):
  return {record["time_ms"]: record for record in records}


@pytest.fixture(scope="module")
def fixture(tmp_path_factory):
  _tables_or_skip()
  src = str(tmp_path_factory.mktemp("kuairand_src"))
  rows = _make_fixture(src)
  return src, rows


@pytest.fixture(scope="module")
def prepared(fixture, tmp_path_factory):
  """The converter's output with default options, read back."""
  src, rows = fixture
  out = str(tmp_path_factory.mktemp("kuairand_out"))
  stats = kuairand.prepare(src, out, rows_per_shard=1000)
  records = {split: _read_records(out, split)
             for split in ("train", "valid", "test", "test_random")}
  return out, stats, records, rows


@pytest.fixture(scope="module")
def merged(fixture, tmp_path_factory):
  """The converter's output with tabs of fewer than 100 training rows merged."""
  src, rows = fixture
  out = str(tmp_path_factory.mktemp("kuairand_merged"))
  stats = kuairand.prepare(src, out, min_tab_rows=100)
  records = {split: _read_records(out, split) for split in ("train", "valid", "test")}
  return out, stats, records, rows


# ---------------------------------------------------------------------------
# Converter on the fixture.
# ---------------------------------------------------------------------------


def test_fixture_label_rates_realistic(fixture):
  _, rows = fixture
  rates = {task: np.mean([row[task] for row in rows["standard"]]) for task in _TASKS}
  assert 0.30 <= rates["is_click"] <= 0.40
  assert 0.005 <= rates["is_like"] <= 0.025
  assert rates["is_follow"] < 0.01
  assert 0.20 <= rates["long_view"] <= 0.40


def test_split_row_counts(prepared):
  _, stats, records, rows = prepared
  expected = collections.Counter(_date_split(row) for row in rows["standard"]
                                 if row["tab"] != _UNSEEN_TAB)
  for split in ("train", "valid", "test"):
    assert len(records[split]) == expected[split], split
    assert stats["rows"][split] == expected[split], split
  assert expected["train"] > 2000
  assert expected["valid"] > 400
  assert expected["test"] > 400


def test_shards_named_and_sized(prepared):
  out, stats, _, _ = prepared
  train_shards = sorted(os.path.basename(path)
                        for path in glob.glob(os.path.join(out, "train-*.tfrecord")))
  num_shards = -(-stats["rows"]["train"] // 1000)
  assert train_shards == [f"train-{index:05d}-of-{num_shards:05d}.tfrecord"
                          for index in range(num_shards)]
  assert stats["shards"]["train"] == train_shards
  assert not glob.glob(os.path.join(out, "*.tmp"))


def test_records_match_log_rows(prepared):
  _, _, records, rows = prepared
  written = {**_by_time(records["train"]), **_by_time(records["valid"]),
             **_by_time(records["test"])}
  for row in rows["standard"]:
    if row["tab"] == _UNSEEN_TAB:
      assert row["time_ms"] not in written
      continue
    record = written[row["time_ms"]]
    for name in ("user_id", "video_id", "date") + _TASKS:
      assert record[name] == row[name], name
    assert record["raw_tab"] == row["tab"]
    assert record["tab"] == row["tab"]
    assert record["hour"] == row["hourmin"] // 100


def test_labels_are_binary(prepared):
  _, _, records, _ = prepared
  for split, split_records in records.items():
    for task in _TASKS:
      assert {record[task] for record in split_records} <= {0, 1}, (split, task)
    assert all(isinstance(record["is_click"], int) for record in split_records)


def test_domains_default_keep_training_tabs(prepared):
  out, stats, _, _ = prepared
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  assert config.domain.values == sorted(_TAB_SHARES)
  assert config.domain.fallback is None
  assert config.domain.embed is True
  assert config.domain.feature == "tab"
  # Without a fallback domain the rows of a tab unseen in training are dropped.
  assert stats["dropped_rows"] == {"test": _UNSEEN_TAB_ROWS}


def test_rare_tab_merged_into_other(merged):
  out, stats, records, rows = merged
  train_rows_per_tab = collections.Counter(
      row["tab"] for row in rows["standard"] if _date_split(row) == "train")
  assert train_rows_per_tab[6] < 100 <= min(train_rows_per_tab[tab] for tab in (0, 1, 2, 4))

  config = features_lib.load(os.path.join(out, "feature_config.json"))
  assert config.domain.values == [0, 1, 2, 4, -1]
  assert config.domain.fallback == -1
  assert stats["domains"]["merged_tabs"] == [6]
  for split_records in records.values():
    for record in split_records:
      if record["raw_tab"] in (6, _UNSEEN_TAB):
        assert record["tab"] == -1
      else:
        assert record["tab"] == record["raw_tab"]
  # The unseen tab goes to the fallback domain instead of being dropped.
  unseen = [record for record in records["test"] if record["raw_tab"] == _UNSEEN_TAB]
  assert len(unseen) == _UNSEEN_TAB_ROWS
  assert stats["dropped_rows"] == {}
  assert stats["splits"]["train"]["domains"]["-1"]["rows"] == train_rows_per_tab[6]


def _expected_statistics(rows, domain_of):
  """Per (user, domain) and (video, domain): [rows, clicks] over the training rows."""
  counts = {"user": collections.defaultdict(lambda: [0, 0]),
            "video": collections.defaultdict(lambda: [0, 0])}
  for row in rows["standard"]:
    if _date_split(row) != "train":
      continue
    domain = domain_of(row["tab"])
    for prefix in ("user", "video"):
      total = counts[prefix][(row[f"{prefix}_id"], domain)]
      total[0] += 1
      total[1] += row["is_click"]
  return counts


def _train_click_rate(rows):
  return np.mean([row["is_click"] for row in rows["standard"] if _date_split(row) == "train"])


def _check_row_statistics(record, counts, prior, is_train):
  for prefix in ("user", "video"):
    exposures, clicks = counts[prefix].get((record[f"{prefix}_id"], record["tab"]), (0, 0))
    if is_train:
      exposures -= 1
      clicks -= record["is_click"]
    rate = (clicks + prior * _K) / (exposures + _K)
    assert record[f"{prefix}_tab_exposures"] == exposures, prefix
    assert record[f"{prefix}_tab_clicks"] == clicks, prefix
    assert record[f"{prefix}_tab_click_rate"] == pytest.approx(rate, rel=1e-6), prefix


def test_train_row_statistics_leave_one_out(prepared):
  _, stats, records, rows = prepared
  counts = _expected_statistics(rows, lambda tab: tab)
  prior = _train_click_rate(rows)
  assert stats["prior_rate"]["is_click"] == pytest.approx(prior, abs=1e-6)

  # One clicked training row of a busy (user, tab) pair, recomputed by hand.
  row = next(record for record in records["train"]
             if record["is_click"] == 1
             and counts["user"][(record["user_id"], record["tab"])][0] >= 5)
  others = [other for other in rows["standard"]
            if _date_split(other) == "train" and other["user_id"] == row["user_id"]
            and other["tab"] == row["tab"] and other["time_ms"] != row["time_ms"]]
  assert row["user_tab_exposures"] == len(others)
  assert row["user_tab_clicks"] == sum(other["is_click"] for other in others)

  for record in records["train"]:
    _check_row_statistics(record, counts, prior, is_train=True)


def test_eval_row_statistics_from_training_only(prepared):
  _, _, records, rows = prepared
  counts = _expected_statistics(rows, lambda tab: tab)
  prior = _train_click_rate(rows)

  # One test row, recomputed from the training rows only: its own label and every
  # validation and test row are absent from its statistics.
  row = next(record for record in records["test"] if record["is_click"] == 1)
  training = [other for other in rows["standard"]
              if _date_split(other) == "train" and other["video_id"] == row["video_id"]
              and other["tab"] == row["tab"]]
  assert row["video_tab_exposures"] == len(training)
  assert row["video_tab_clicks"] == sum(other["is_click"] for other in training)

  for split in ("valid", "test", "test_random"):
    for record in records[split]:
      _check_row_statistics(record, counts, prior, is_train=False)


def test_merged_statistics_pool_tabs(merged):
  _, _, records, rows = merged
  counts = _expected_statistics(rows, lambda tab: -1 if tab == 6 else tab)
  prior = _train_click_rate(rows)
  for record in records["train"]:
    _check_row_statistics(record, counts, prior, is_train=True)
  for record in records["test"]:
    _check_row_statistics(record, counts, prior, is_train=False)


def test_general_features_joined_from_tables(prepared):
  _, _, records, _ = prepared
  users = _read_table(kuairand.USER_TABLE)
  videos = _read_table(kuairand.VIDEO_TABLE)
  record = next(record for record in records["train"]
                if record["user_id"] in users and record["video_id"] in videos)
  user = users[record["user_id"]]
  video = videos[record["video_id"]]
  assert record["user_active_degree"] == user["user_active_degree"]
  assert record["fans_user_num_range"] == user["fans_user_num_range"]
  assert record["is_live_streamer"] == user["is_live_streamer"]
  # Integral floats of the table ("1.0") are written without the fraction.
  onehot4 = user["onehot_feat4"]
  assert record["onehot_feat4"] == (str(int(float(onehot4))) if onehot4 else "")
  assert record["author_id"] == int(video["author_id"])
  assert record["video_type"] == video["video_type"]
  assert record["tag"] == video["tag"].split(",")[0]
  music = video["music_type"]
  assert record["music_type"] == (str(int(float(music))) if music else "")
  duration = float(video["video_duration"]) if video["video_duration"] else -1.0
  assert record["video_duration"] == pytest.approx(duration)


def test_unknown_ids_counted_and_defaulted(prepared):
  _, stats, records, _ = prepared
  written = [record for split in records.values() for record in split]
  unknown_user_rows = [record for record in written if record["user_id"] in _UNKNOWN_USERS]
  unknown_video_rows = [record for record in written if record["video_id"] in _UNKNOWN_VIDEOS]
  assert stats["unknown_ids"]["user_id"]["rows"] == len(unknown_user_rows) > 0
  assert stats["unknown_ids"]["user_id"]["distinct"] == 2
  assert stats["unknown_ids"]["video_id"]["rows"] == len(unknown_video_rows) > 0
  assert sorted(stats["unknown_ids"]["video_id"]["examples"]) == list(_UNKNOWN_VIDEOS)
  for record in unknown_user_rows:
    assert record["user_active_degree"] == ""
    assert record["onehot_feat0"] == ""
  for record in unknown_video_rows:
    assert record["author_id"] == -1
    assert record["video_duration"] == -1.0
    assert record["video_type"] == ""


def test_config_validates_and_vocabularies_from_train(prepared):
  out, _, records, _ = prepared
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  assert [spec.name for spec in config.prior] == ["user_id", "video_id", "author_id"]
  assert [spec.name for spec in config.domain_side] == list(kuairand.DOMAIN_SIDE_FEATURES)
  assert config.task_names == list(_TASKS)
  assert {"user_active_degree", "onehot_feat17", "tag", "video_duration",
          "hour"} <= {spec.name for spec in config.general}
  assert config.user_id_feature == "user_id"

  train = records["train"]
  assert config.vocabulary_of(config.feature("user_id")) == sorted(
      {record["user_id"] for record in train})
  assert config.vocabulary_of(config.feature("hour")) == sorted(
      {record["hour"] for record in train})
  assert config.vocabulary_of(config.feature("video_type")) == sorted(
      {record["video_type"] for record in train} - {""})
  # The vocabularies of later splits may only be smaller.
  assert -1 not in config.vocabulary_of(config.feature("author_id"))


def test_large_vocabulary_in_file(prepared, monkeypatch, fixture, tmp_path):
  src, _ = fixture
  monkeypatch.setattr(kuairand, "INLINE_VOCABULARY_MAX", 100)
  out = str(tmp_path / "out")
  kuairand.prepare(src, out, test_random=False)
  with open(os.path.join(out, "feature_config.json"), encoding="utf-8") as handle:
    raw = json.load(handle)
  user_spec = next(spec for spec in raw["features"] if spec["name"] == "user_id")
  assert user_spec["vocabulary_file"] == "vocab/user_id.txt"
  assert "vocabulary" not in user_spec
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  _, _, records, _ = prepared
  assert config.vocabulary_of(config.feature("user_id")) == sorted(
      {record["user_id"] for record in records["train"]})


def _quantile_cuts(values, num_buckets):
  """Distinct inner cut points: cut k is the ceil(k * n / num_buckets)-th smallest value."""
  ordered = np.sort(np.asarray(values, dtype=np.float64))
  count = len(ordered)
  indices = [(k * count + num_buckets - 1) // num_buckets - 1 for k in range(1, num_buckets)]
  return np.unique(np.round(ordered[indices], 6))


def test_boundaries_are_training_quantiles(prepared):
  out, _, records, _ = prepared
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  num_buckets = kuairand.DEFAULT_NUM_BUCKETS
  for name in kuairand.DOMAIN_SIDE_FEATURES:
    values = [record[name] for record in records["train"]]
    np.testing.assert_allclose(config.feature(name).boundaries,
                               _quantile_cuts(values, num_buckets), atol=2e-6, err_msg=name)
  durations = [record["video_duration"] for record in records["train"]
               if record["video_duration"] >= 0]
  np.testing.assert_allclose(config.feature("video_duration").boundaries,
                             np.concatenate([[0.0], _quantile_cuts(durations, num_buckets)]),
                             rtol=1e-6)


def test_weighted_quantiles_by_hand():
  # Values 1, 2, 3 with weights 1, 2, 1 are the list [1, 2, 2, 3]. Four buckets cut
  # after the 1st, 2nd and 3rd of the four values.
  assert kuairand.weighted_quantile_boundaries([3, 1, 2], [1, 1, 2], 4) == [1.0, 2.0]
  assert kuairand.weighted_quantile_boundaries([1, 2], [0, 5], 2) == [2.0]
  assert kuairand.weighted_quantile_boundaries([1, 2], [0, 0], 2) == []


def test_test_random_from_test_period(prepared):
  out, stats, records, rows = prepared
  expected = [row for row in rows["random"] if row["date"] > _VALID_END]
  assert len(records["test_random"]) == len(expected) == stats["rows"]["test_random"]
  assert {record["time_ms"] for record in records["test_random"]} == {
      row["time_ms"] for row in expected}
  assert glob.glob(os.path.join(out, "test_random-00000-of-00001.tfrecord"))


def test_stats_json_content(prepared):
  out, stats, records, _ = prepared
  with open(os.path.join(out, "stats.json"), encoding="utf-8") as handle:
    saved = json.load(handle)
  assert saved["rows"] == stats["rows"]
  assert saved["options"]["split"] == "date"
  assert saved["options"]["train_end_date"] == _TRAIN_END
  for split, split_records in records.items():
    summary = saved["splits"][split]
    assert summary["rows"] == len(split_records)
    assert sum(domain["rows"] for domain in summary["domains"].values()) == len(split_records)
    for task in _TASKS:
      rate = np.mean([record[task] for record in split_records])
      assert summary["positive_rate"][task] == pytest.approx(rate, abs=1e-6)
    for domain, value in summary["domains"].items():
      domain_records = [record for record in split_records if record["tab"] == int(domain)]
      assert value["rows"] == len(domain_records)
      if domain_records:
        click_rate = np.mean([record["is_click"] for record in domain_records])
        assert value["positive_rate"]["is_click"] == pytest.approx(click_rate, abs=1e-6)


def test_random_split_follows_seeded_draws(fixture, tmp_path):
  src, rows = fixture
  out = str(tmp_path / "random")
  stats = kuairand.prepare(src, out, split="random", seed=2023)
  draws = np.random.default_rng(2023).random(len(rows["standard"]))
  splits = []
  for draw in draws:
    if draw < 0.8:
      splits.append("train")
    elif draw < 0.9:
      splits.append("valid")
    else:
      splits.append("test")
  training_tabs = {row["tab"] for row, split in zip(rows["standard"], splits)
                   if split == "train"}
  expected = collections.defaultdict(set)
  for row, split in zip(rows["standard"], splits):
    # Rows of a tab absent from training are dropped, as there is no fallback domain.
    if row["tab"] in training_tabs:
      expected[split].add(row["time_ms"])
  for split in ("train", "valid", "test"):
    assert {record["time_ms"] for record in _read_records(out, split)} == expected[split]
  assert abs(stats["rows"]["train"] / len(rows["standard"]) - 0.8) < 0.03
  # Under the random split test_random contains the whole random log.
  assert stats["rows"]["test_random"] == len(rows["random"])
  assert stats["options"]["seed"] == 2023


def test_without_test_random(fixture, tmp_path):
  src, _ = fixture
  # The random log is not needed when test_random is off.
  src_copy = str(tmp_path / "src")
  shutil.copytree(src, src_copy)
  os.remove(os.path.join(src_copy, "KuaiRand-Pure", "data", kuairand.RANDOM_LOG))
  out = str(tmp_path / "out")
  stats = kuairand.prepare(src_copy, out, test_random=False)
  assert "test_random" not in stats["rows"]
  assert not glob.glob(os.path.join(out, "test_random-*"))


def test_rerun_removes_stale_shards(fixture, tmp_path):
  src, _ = fixture
  out = str(tmp_path / "out")
  kuairand.prepare(src, out, rows_per_shard=500, test_random=False)
  stats = kuairand.prepare(src, out, rows_per_shard=100_000, test_random=False)
  assert sorted(os.path.basename(path) for path in glob.glob(os.path.join(out, "*.tfrecord"))) \
      == ["test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
          "valid-00000-of-00001.tfrecord"]
  assert stats["rows"]["train"] == len(_read_records(out, "train"))


def test_cli_prepare_prints_summary(fixture, tmp_path):
  src, _ = fixture
  out = str(tmp_path / "cli")
  result = subprocess.run(
      [sys.executable, "-m", "data.kuairand", "prepare", f"--src={src}", f"--out={out}",
       "--min_tab_rows=100"],
      cwd=_REPO_ROOT, capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "kuairand_pure (date split): train " in result.stdout
  assert "Domain -1 holds the merged tabs [6]." in result.stdout
  lines = [line.split() for line in result.stdout.splitlines()]
  assert any(line[:2] == ["train", "-1"] for line in lines)
  assert any(line[:2] == ["test_random", "all"] for line in lines)
  assert os.path.exists(os.path.join(out, "feature_config.json"))


# ---------------------------------------------------------------------------
# Converter on bad input.
# ---------------------------------------------------------------------------


def _copy_source(fixture, tmp_path):
  src, _ = fixture
  copy = str(tmp_path / "src")
  shutil.copytree(src, copy)
  return copy, os.path.join(copy, "KuaiRand-Pure", "data")


def _rewrite_lines(path, edit):
  with open(path, encoding="utf-8") as handle:
    lines = handle.read().splitlines()
  with open(path, "w", encoding="utf-8") as handle:
    handle.write("\n".join(edit(lines)) + "\n")


def test_missing_file_named(fixture, tmp_path):
  src, _ = _copy_source(fixture, tmp_path)
  os.remove(os.path.join(src, kuairand.VIDEO_TABLE))
  with pytest.raises(FileNotFoundError, match="video_features_basic_pure.csv not found in"):
    kuairand.prepare(src, str(tmp_path / "out"))


def test_missing_log_named_by_cli(tmp_path):
  src = str(tmp_path / "empty")
  os.makedirs(src)
  out = str(tmp_path / "out")
  result = subprocess.run(
      [sys.executable, "-m", "data.kuairand", "prepare", f"--src={src}", f"--out={out}"],
      cwd=_REPO_ROOT, capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 1
  assert "log_standard_4_08_to_4_21_pure.csv not found in" in result.stderr
  assert not os.path.exists(out)


def test_missing_column_named(fixture, tmp_path):
  src, data_dir = _copy_source(fixture, tmp_path)
  path = os.path.join(data_dir, kuairand.STANDARD_LOGS[1])
  # Drop the last column, tab, from every line.
  _rewrite_lines(path, lambda lines: [line.rsplit(",", 1)[0] for line in lines])
  with pytest.raises(kuairand.InputError, match=r"log_standard_4_22_to_5_08_pure\.csv has no "
                     r"column tab"):
    kuairand.prepare(src, str(tmp_path / "out"))


def test_missing_table_column_named(fixture, tmp_path):
  src, _ = _copy_source(fixture, tmp_path)
  path = os.path.join(src, kuairand.USER_TABLE)
  _rewrite_lines(path, lambda lines: [lines[0].replace("register_days_range",
                                                       "register_range")] + lines[1:])
  with pytest.raises(kuairand.InputError,
                     match=r"user_features_pure\.csv has no column register_days_range"):
    kuairand.prepare(src, str(tmp_path / "out"))


def test_wrong_field_count_line_number(fixture, tmp_path):
  src, data_dir = _copy_source(fixture, tmp_path)
  path = os.path.join(data_dir, kuairand.STANDARD_LOGS[0])
  # Line 1 is the header, so list index 41 is line 42.
  _rewrite_lines(path, lambda lines: lines[:41] + [lines[41] + ",0"] + lines[42:])
  with pytest.raises(kuairand.InputError,
                     match=r"log_standard_4_08_to_4_21_pure\.csv, line 42: 20 fields, but "
                     r"the header has 19"):
    kuairand.prepare(src, str(tmp_path / "out"))
  assert not os.path.exists(str(tmp_path / "out"))


def test_bad_label_value_line_number(fixture, tmp_path):
  src, data_dir = _copy_source(fixture, tmp_path)
  path = os.path.join(data_dir, kuairand.RANDOM_LOG)

  def set_click(lines):
    fields = lines[9].split(",")
    fields[_LOG_HEADER.index("is_click")] = "2"
    return lines[:9] + [",".join(fields)] + lines[10:]

  _rewrite_lines(path, set_click)
  with pytest.raises(kuairand.InputError,
                     match=r"log_random_4_22_to_5_08_pure\.csv, line 10: labels .* must be "
                     r"0 or 1"):
    kuairand.prepare(src, str(tmp_path / "out"))


def test_non_integer_id_named(fixture, tmp_path):
  src, data_dir = _copy_source(fixture, tmp_path)
  path = os.path.join(data_dir, kuairand.STANDARD_LOGS[0])
  _rewrite_lines(path, lambda lines: lines[:3] + ["x" + lines[3]] + lines[4:])
  with pytest.raises(kuairand.InputError, match=r"line 4: column user_id is 'x\d+'"):
    kuairand.prepare(src, str(tmp_path / "out"))


def test_invalid_options_rejected(fixture, tmp_path):
  src, _ = fixture
  with pytest.raises(ValueError, match="must be before valid_end_date"):
    kuairand.prepare(src, str(tmp_path / "a"), train_end_date=20220505)
  with pytest.raises(ValueError, match="fallback_tab 3 is not a domain value"):
    kuairand.prepare(src, str(tmp_path / "b"), fallback_tab="3")
  with pytest.raises(ValueError, match="no tab was merged"):
    kuairand.prepare(src, str(tmp_path / "c"), fallback_tab="other")
  with pytest.raises(kuairand.InputError, match="No log row falls in the training split"):
    kuairand.prepare(src, str(tmp_path / "d"), train_end_date=20220101,
                     valid_end_date=20220102)


# ---------------------------------------------------------------------------
# Downloader against a local server.
# ---------------------------------------------------------------------------


def _tar_gz(members):
  """A tar.gz in memory with `members`: name -> bytes."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name, content in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(content)
      tar.addfile(info, io.BytesIO(content))
  return buffer.getvalue()


# Incompressible content, so the archive is large enough to cut in the middle.
_ARCHIVE_MEMBERS = {
    "KuaiRand-Pure/data/log_random_4_22_to_5_08_pure.csv":
        ",".join(_LOG_HEADER).encode() + b"\n" + np.random.default_rng(1).bytes(200_000),
    "KuaiRand-Pure/data/user_features_pure.csv": b"user_id\n0\n",
}


class _ArchiveHandler(http.server.BaseHTTPRequestHandler):
  """Serves `server.payload` at any path, with the misbehaviour `server.mode` names."""

  def log_message(self, *args):  # pylint: disable=arguments-differ
    del args  # keep test output quiet

  def do_GET(self):  # pylint: disable=invalid-name
    server = self.server
    server.requests.append(self.headers.get("Range"))
    if server.mode in (404, 500):
      self.send_error(server.mode)
      return
    payload = server.payload
    start = 0
    range_header = self.headers.get("Range")
    if range_header and server.mode != "ignore_range":
      start = int(range_header.split("=")[1].rstrip("-"))
      self.send_response(206)
      self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
    else:
      self.send_response(200)
    body = payload[start:]
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    cut = server.mode == "always_cut" or (server.mode == "cut_first" and
                                          len(server.requests) == 1)
    # A cut sends part of the body, and the connection closes when this returns.
    self.wfile.write(body[:server.cut_at] if cut else body)


@pytest.fixture
def server(monkeypatch):
  for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
               "ALL_PROXY"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("no_proxy", "127.0.0.1")
  httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ArchiveHandler)
  httpd.payload = _tar_gz(_ARCHIVE_MEMBERS)
  httpd.mode = "ok"
  httpd.cut_at = 50_000
  httpd.requests = []
  httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}/files/KuaiRand-Pure.tar.gz"
  thread = threading.Thread(target=httpd.serve_forever, daemon=True)
  thread.start()
  yield httpd
  httpd.shutdown()
  httpd.server_close()
  thread.join(timeout=10)


def _check_extracted(dest):
  for name, content in _ARCHIVE_MEMBERS.items():
    with open(os.path.join(dest, name), "rb") as handle:
      assert handle.read() == content, name


def test_download_and_extract(server, tmp_path):
  dest = str(tmp_path / "raw")
  digest = hashlib.sha256(server.payload).hexdigest()
  archive = kuairand.download(dest, url=server.url, checksum=f"sha256:{digest}")
  assert archive == os.path.join(dest, "KuaiRand-Pure.tar.gz")
  with open(archive, "rb") as handle:
    assert handle.read() == server.payload
  assert not os.path.exists(archive + ".part")
  _check_extracted(dest)
  assert kuairand.find_file(dest, kuairand.RANDOM_LOG).endswith(
      os.path.join("KuaiRand-Pure", "data", kuairand.RANDOM_LOG))
  assert server.requests == [None]


def test_download_skips_existing_archive(server, tmp_path):
  dest = str(tmp_path / "raw")
  kuairand.download(dest, url=server.url)
  kuairand.download(dest, url=server.url)
  assert len(server.requests) == 1


def test_download_resumes_after_cut(server, tmp_path):
  server.mode = "cut_first"
  dest = str(tmp_path / "raw")
  archive = kuairand.download(dest, url=server.url, retry_wait=0)
  assert server.requests == [None, f"bytes={server.cut_at}-"]
  with open(archive, "rb") as handle:
    assert handle.read() == server.payload
  _check_extracted(dest)


def test_download_resumes_part_on_next_call(server, tmp_path):
  server.mode = "cut_first"
  dest = str(tmp_path / "raw")
  with pytest.raises(kuairand.DownloadError, match="running the command again resumes"):
    kuairand.download(dest, url=server.url, retries=0)
  part = os.path.join(dest, "KuaiRand-Pure.tar.gz.part")
  assert os.path.getsize(part) == server.cut_at
  kuairand.download(dest, url=server.url, retries=0)
  assert server.requests[-1] == f"bytes={server.cut_at}-"
  _check_extracted(dest)


def test_download_restarts_when_range_ignored(server, tmp_path):
  server.mode = "ignore_range"
  dest = str(tmp_path / "raw")
  os.makedirs(dest)
  # A stale part that is not a prefix of the archive must not survive.
  with open(os.path.join(dest, "KuaiRand-Pure.tar.gz.part"), "wb") as handle:
    handle.write(b"x" * 1000)
  archive = kuairand.download(dest, url=server.url)
  assert server.requests == ["bytes=1000-"]
  with open(archive, "rb") as handle:
    assert handle.read() == server.payload


def test_download_size_mismatch(server, tmp_path):
  server.mode = "always_cut"
  # Every attempt resumes where the previous one was cut.
  with pytest.raises(kuairand.DownloadError,
                     match=f"after 3 attempts: connection closed after {3 * server.cut_at} "
                     f"of {len(server.payload)} bytes"):
    kuairand.download(str(tmp_path / "raw"), url=server.url, retries=2, retry_wait=0)
  server.mode = "ok"
  with pytest.raises(kuairand.DownloadError,
                     match=f"reports {len(server.payload)} bytes, expected 123"):
    kuairand.download(str(tmp_path / "other"), url=server.url, expected_size=123)


def test_download_checksum_mismatch(server, tmp_path):
  dest = str(tmp_path / "raw")
  with pytest.raises(kuairand.DownloadError, match="has sha256 .* expected 0{64}. It was deleted"):
    kuairand.download(dest, url=server.url, checksum="sha256:" + "0" * 64)
  assert os.listdir(dest) == []


@pytest.mark.parametrize("status, message", [
    (404, r"returned HTTP 404 \(Not Found\)\. The archive may have another name"),
    (500, r"returned HTTP 500 .*a server error"),
])
def test_download_http_errors(server, tmp_path, status, message):
  server.mode = status
  dest = str(tmp_path / "raw")
  with pytest.raises(kuairand.DownloadError, match=message) as raised:
    kuairand.download(dest, url=server.url)
  text = str(raised.value)
  assert server.url in text
  assert f"extract it yourself so that the log and feature CSV files lie in {dest}" in text
  assert len(server.requests) == 1


def test_download_unreachable_names_url(tmp_path, monkeypatch):
  monkeypatch.setenv("no_proxy", "127.0.0.1")
  # A port that was just free on 127.0.0.1 refuses the connection.
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  url = f"http://127.0.0.1:{port}/KuaiRand-Pure.tar.gz"
  with pytest.raises(kuairand.DownloadError, match="Cannot reach") as raised:
    kuairand.download(str(tmp_path / "raw"), url=url)
  assert url in str(raised.value)
  assert "download by hand" in str(raised.value)


def test_cli_download_404(server, tmp_path):
  server.mode = 404
  dest = str(tmp_path / "raw")
  env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
  result = subprocess.run(
      [sys.executable, "-m", "data.kuairand", "download", f"--dest={dest}",
       f"--url={server.url}"],
      cwd=_REPO_ROOT, env=env, capture_output=True, text=True, check=False, timeout=120)
  assert result.returncode == 1
  assert "Downloading KuaiRand-Pure failed" in result.stderr
  assert "The archive may have another name" in result.stderr
  assert server.url in result.stderr


@pytest.mark.parametrize("name", ["../evil.csv", "/tmp/evil.csv", "data/../../evil.csv"])
def test_extract_rejects_path_traversal(server, tmp_path, name):
  server.payload = _tar_gz({"KuaiRand-Pure/ok.csv": b"a\n", name: b"evil\n"})
  dest = str(tmp_path / "raw")
  with pytest.raises(kuairand.UnsafeArchiveError, match="Nothing was extracted"):
    kuairand.download(dest, url=server.url)
  assert not os.path.exists(os.path.join(dest, "KuaiRand-Pure"))
  assert not os.path.exists(tmp_path / "evil.csv")


def test_extract_rejects_escaping_link(tmp_path):
  archive = str(tmp_path / "links.tar.gz")
  with tarfile.open(archive, "w:gz") as tar:
    link = tarfile.TarInfo("KuaiRand-Pure/link")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../outside"
    tar.addfile(link)
  with pytest.raises(kuairand.UnsafeArchiveError, match="link target"):
    kuairand.extract_archive(archive, str(tmp_path / "dest"))


def test_extract_unreadable_archive(tmp_path):
  archive = str(tmp_path / "broken.tar.gz")
  with open(archive, "wb") as handle:
    handle.write(b"not a tar file")
  with pytest.raises(kuairand.DownloadError, match="is not a readable tar archive"):
    kuairand.extract_archive(archive, str(tmp_path / "dest"))


# ---------------------------------------------------------------------------
# Training on the converted data.
# ---------------------------------------------------------------------------


def test_training_on_converted_data(prepared, tmp_path):
  from pepnet_tf import training  # pylint: disable=g-import-not-at-top

  out, _, _, _ = prepared
  config = training.TrainConfig(
      model_dir=str(tmp_path / "model"),
      feature_config=os.path.join(out, "feature_config.json"),
      train_files=[os.path.join(out, "train-*.tfrecord")],
      valid_files=[os.path.join(out, "valid-*.tfrecord")],
      test_files=[os.path.join(out, "test-*.tfrecord")],
      epochs=1, batch_size=256, hidden_units=[16], export=False, verbose=0)
  result = training.train(config)
  metrics = result["test_metrics"]
  for task in _TASKS:
    assert f"auc/{task}" in metrics
    assert f"logloss/{task}" in metrics
  assert "auc/is_click/domain_0" in metrics
  assert 0.0 <= metrics["auc/is_click"] <= 1.0
