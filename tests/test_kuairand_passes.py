"""Tests of the daily pass layout of the KuaiRand-Pure converter (`--split=passes`).

The tests use two generated logs, both joined with the real feature tables. The first
is a hand-made log of 11 rows, whose periods and statistics are computed by hand
below. The second is the seeded log of `test_kuairand.py`, and its expected records
are recomputed here from its rows, independently of `data.kuairand`.
"""

import collections
import glob
import json
import os
import shutil
import subprocess
import sys

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import pytest

from data import kuairand
from pepnet_tf import features as features_lib
import test_kuairand as base

_BASE_TIME_MS = 1_649_376_000_000
_U1, _U2 = 0, 1  # positions in the sorted user table
_V1, _V2 = 0, 1  # positions in the sorted video table


# ---------------------------------------------------------------------------
# Hand-made log.
# ---------------------------------------------------------------------------


def _hand_row(index, user, video, date, tab, click):
  row = {name: 0 for name in base._LOG_HEADER}
  row.update(user_id=user, video_id=video, date=date, hourmin=1200, tab=tab,
             is_click=click, long_view=click, time_ms=_BASE_TIME_MS + index)
  return row


def _hand_rows(users, videos):
  """Return rows r1..r11 from (user, video, date, tab, click). No row has 20220411."""
  u1, u2 = users[_U1], users[_U2]
  v1, v2 = videos[_V1], videos[_V2]
  spec = [
      (u1, v1, 20220408, 0, 1), (u1, v1, 20220408, 0, 0), (u1, v2, 20220408, 0, 1),
      (u2, v1, 20220408, 0, 0), (u2, v1, 20220408, 1, 1),
      (u1, v1, 20220409, 0, 1), (u1, v1, 20220409, 0, 1), (u2, v2, 20220409, 1, 0),
      # Tab 5 does not occur in the first pass, so it goes to domain -1.
      (u1, v1, 20220410, 0, 0), (u2, v1, 20220410, 5, 1),
      (u1, v1, 20220412, 0, 1),
  ]
  return [_hand_row(index, *values) for index, values in enumerate(spec, start=1)]


def _write_hand_source(src, rows):
  data_dir = os.path.join(src, "KuaiRand-Pure", "data")
  os.makedirs(data_dir)
  base._write_log(os.path.join(data_dir, kuairand.STANDARD_LOGS[0]), rows[:8])
  base._write_log(os.path.join(data_dir, kuairand.STANDARD_LOGS[1]), rows[8:])
  for name in (kuairand.USER_TABLE, kuairand.VIDEO_TABLE):
    shutil.copy(os.path.join(base._TABLES_DIR, name), src)


@pytest.fixture(scope="module")
def hand_ids():
  base._tables_or_skip()
  return sorted(base._read_table(kuairand.USER_TABLE)), sorted(
      base._read_table(kuairand.VIDEO_TABLE))


@pytest.fixture(scope="module")
def hand_source(hand_ids, tmp_path_factory):
  src = str(tmp_path_factory.mktemp("passes_hand_src"))
  _write_hand_source(src, _hand_rows(*hand_ids))
  return src


@pytest.fixture(scope="module")
def hand_passes(hand_source, tmp_path_factory):
  """Convert the hand-made log to one-day passes without validation rows."""
  out = str(tmp_path_factory.mktemp("passes_hand_out"))
  stats = kuairand.prepare(hand_source, out, split="passes", valid_fraction=0.0,
                           test_random=False)
  return out, stats


def _records_by_row(out, pass_name, split):
  """Read the records of one split of one pass, keyed by the row number r1..r11."""
  records = base._read_records(os.path.join(out, pass_name), split)
  return {record["time_ms"] - _BASE_TIME_MS: record for record in records}


def test_hand_passes_json(hand_passes):
  out, _ = hand_passes
  with open(os.path.join(out, "passes.json"), encoding="utf-8") as handle:
    manifest = json.load(handle)
  # Periods: 04-08 -> 0, 04-09 -> 1, 04-10 -> 2, 04-12 -> 4. Period 3 is empty and
  # merged into period 4, so pass_003 tests on 04-11 and 04-12, and period 4 is a
  # test set only.
  assert manifest == {
      "dataset": "kuairand_pure",
      "pass_days": 1,
      "seed": 2023,
      "passes": [
          {"name": "pass_001", "start": "2022-04-08", "end": "2022-04-09",
           "test_start": "2022-04-09", "test_end": "2022-04-10",
           "train_rows": 5, "valid_rows": 0, "test_rows": 3},
          {"name": "pass_002", "start": "2022-04-09", "end": "2022-04-10",
           "test_start": "2022-04-10", "test_end": "2022-04-11",
           "train_rows": 3, "valid_rows": 0, "test_rows": 2},
          {"name": "pass_003", "start": "2022-04-10", "end": "2022-04-11",
           "test_start": "2022-04-11", "test_end": "2022-04-13",
           "train_rows": 2, "valid_rows": 0, "test_rows": 1},
      ],
  }


def test_hand_period_rows(hand_passes):
  out, _ = hand_passes
  expected = {
      "pass_001": {"train": {1, 2, 3, 4, 5}, "valid": set(), "test": {6, 7, 8}},
      "pass_002": {"train": {6, 7, 8}, "valid": set(), "test": {9, 10}},
      "pass_003": {"train": {9, 10}, "valid": set(), "test": {11}},
  }
  for pass_name, splits in expected.items():
    for split, rows in splits.items():
      assert set(_records_by_row(out, pass_name, split)) == rows, (pass_name, split)
  assert sorted(os.path.basename(path) for path in glob.glob(os.path.join(out, "pass_*"))) \
      == ["pass_001", "pass_002", "pass_003"]


def test_hand_two_day_periods(hand_source, tmp_path):
  out = str(tmp_path / "out")
  kuairand.prepare(hand_source, out, split="passes", pass_days=2, valid_fraction=0.0,
                   test_random=False)
  with open(os.path.join(out, "passes.json"), encoding="utf-8") as handle:
    manifest = json.load(handle)
  # [04-08, 04-10) contains r1..r8, [04-10, 04-12) r9 and r10, [04-12, 04-14) r11.
  assert manifest["pass_days"] == 2
  assert manifest["passes"] == [
      {"name": "pass_001", "start": "2022-04-08", "end": "2022-04-10",
       "test_start": "2022-04-10", "test_end": "2022-04-12",
       "train_rows": 8, "valid_rows": 0, "test_rows": 2},
      {"name": "pass_002", "start": "2022-04-10", "end": "2022-04-12",
       "test_start": "2022-04-12", "test_end": "2022-04-14",
       "train_rows": 2, "valid_rows": 0, "test_rows": 1},
  ]
  assert set(_records_by_row(out, "pass_001", "train")) == set(range(1, 9))
  assert set(_records_by_row(out, "pass_002", "test")) == {11}


def test_hand_domains_from_first_pass(hand_passes):
  out, stats = hand_passes
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  # Tabs 0 and 1 have first-pass training rows, and -1 is always a domain.
  assert config.domain.values == [0, 1, -1]
  assert config.domain.fallback == -1
  assert stats["domains"]["first_pass_tab_training_rows"] == {"0": 4, "1": 1}
  record = _records_by_row(out, "pass_003", "train")[10]
  assert record["raw_tab"] == 5
  assert record["tab"] == -1


# (pass, split, row) -> user (exposures, clicks, rate), video (exposures, clicks, rate).
# Smoothing k is 10. The prior is the click rate of the training rows up to the pass:
# 3/5 = 0.6 for pass_001, 5/8 = 0.625 for pass_002, 6/10 = 0.6 for pass_003.
_HAND_STATISTICS = {
    # Training rows leave themselves out. (U1, 0) in period 0: 3 rows, 2 clicks.
    ("pass_001", "train", 1): ((2, 1, 7 / 12), (2, 0, 6 / 12)),
    ("pass_001", "train", 2): ((2, 2, 8 / 12), (2, 1, 7 / 12)),
    ("pass_001", "train", 5): ((0, 0, 0.6), (0, 0, 0.6)),
    # Test rows of period 1 see all training rows of period 0 and nothing later.
    ("pass_001", "test", 6): ((3, 2, 8 / 13), (3, 1, 7 / 13)),
    ("pass_001", "test", 8): ((1, 1, 7 / 11), (0, 0, 0.6)),
    # Periods 0 and 1 together: (U1, 0) 5 rows, 4 clicks; (V1, 0) 5 rows, 3 clicks.
    ("pass_002", "train", 6): ((4, 3, 9.25 / 14), (4, 2, 8.25 / 14)),
    ("pass_002", "test", 9): ((5, 4, 10.25 / 15), (5, 3, 9.25 / 15)),
    ("pass_002", "test", 10): ((0, 0, 0.625), (0, 0, 0.625)),
    # Periods 0 to 2: (U1, 0) 6 rows, 4 clicks; (V1, 0) 6 rows, 3 clicks.
    ("pass_003", "train", 9): ((5, 4, 10 / 15), (5, 3, 9 / 15)),
    ("pass_003", "train", 10): ((0, 0, 0.6), (0, 0, 0.6)),
    # r11 is a click, but neither it nor any later row is counted.
    ("pass_003", "test", 11): ((6, 4, 10 / 16), (6, 3, 9 / 16)),
}


@pytest.mark.parametrize("key", sorted(_HAND_STATISTICS))
def test_hand_statistics(hand_passes, key):
  out, _ = hand_passes
  pass_name, split, row = key
  record = _records_by_row(out, pass_name, split)[row]
  for prefix, (exposures, clicks, rate) in zip(("user", "video"), _HAND_STATISTICS[key]):
    assert record[f"{prefix}_tab_exposures"] == exposures, prefix
    assert record[f"{prefix}_tab_clicks"] == clicks, prefix
    assert record[f"{prefix}_tab_click_rate"] == pytest.approx(rate, rel=1e-6), prefix


def test_later_rows_change_no_earlier_pass(hand_ids, hand_passes, tmp_path):
  out, _ = hand_passes
  rows = _hand_rows(*hand_ids)
  # Flip every label of periods 2 and 4 and add rows of the busy pairs on 04-12.
  for row in rows[8:]:
    row["is_click"] = 1 - row["is_click"]
  rows += [_hand_row(12 + index, row["user_id"], row["video_id"], 20220412, 0, 1)
           for index, row in enumerate(rows[:4])]
  src = str(tmp_path / "src")
  _write_hand_source(src, rows)
  changed = str(tmp_path / "out")
  kuairand.prepare(src, changed, split="passes", valid_fraction=0.0, test_random=False)

  def shard_bytes(root, pass_name, split):
    paths = sorted(glob.glob(os.path.join(root, pass_name, f"{split}-*.tfrecord")))
    return [open(path, "rb").read() for path in paths]  # pylint: disable=consider-using-with

  for split in ("train", "valid", "test"):
    assert shard_bytes(changed, "pass_001", split) == shard_bytes(out, "pass_001", split), split
  assert shard_bytes(changed, "pass_002", "train") == shard_bytes(out, "pass_002", "train")
  assert shard_bytes(changed, "pass_002", "test") != shard_bytes(out, "pass_002", "test")
  with open(os.path.join(out, "feature_config.json"), encoding="utf-8") as handle:
    original_config = handle.read()
  with open(os.path.join(changed, "feature_config.json"), encoding="utf-8") as handle:
    assert handle.read() == original_config


def test_config_admits_vocabularies(hand_passes):
  out, _ = hand_passes
  with open(os.path.join(out, "feature_config.json"), encoding="utf-8") as handle:
    raw = json.load(handle)
  config = features_lib.from_dict(raw)
  specs = {spec["name"]: spec for spec in raw["features"]}
  for name in ("user_id", "video_id", "author_id"):
    assert specs[name]["group"] == "prior"
    assert specs[name]["min_frequency"] == 2, name
    assert specs[name]["num_oov_buckets"] == 8, name
  for name in ("user_active_degree", "onehot_feat17", "video_type", "tag", "hour"):
    assert specs[name]["group"] == "general"
    assert specs[name]["min_frequency"] == 1, name
    assert "num_oov_buckets" not in specs[name], name
  for spec in raw["features"]:
    assert "vocabulary" not in spec, spec["name"]
    assert "vocabulary_file" not in spec, spec["name"]
  assert not os.path.exists(os.path.join(out, "vocab"))
  assert config.needs_admission

  powers = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            4096.0, 8192.0, 16384.0, 32768.0, 65536.0, 131072.0, 262144.0, 524288.0,
            1048576.0]
  for prefix in ("user_tab", "video_tab"):
    assert specs[f"{prefix}_exposures"]["boundaries"] == powers
    assert specs[f"{prefix}_clicks"]["boundaries"] == powers
    assert specs[f"{prefix}_click_rate"]["boundaries"] == pytest.approx(
        [0.05 * index for index in range(1, 20)])


def test_random_log_by_test_window(hand_ids, tmp_path):
  users, videos = hand_ids
  src = str(tmp_path / "src")
  _write_hand_source(src, _hand_rows(users, videos))
  # 04-08 is in no test window. 04-11 has no standard-log row, so it is merged into
  # the window of 04-12, which pass_003 tests on.
  random_rows = [_hand_row(100 + index, users[_U1], videos[_V1], date, 0, 1)
                 for index, date in enumerate([20220408, 20220409, 20220411, 20220412])]
  base._write_log(os.path.join(src, "KuaiRand-Pure", "data", kuairand.RANDOM_LOG),
                  random_rows)
  out = str(tmp_path / "out")
  stats = kuairand.prepare(src, out, split="passes", valid_fraction=0.0)
  assert set(_records_by_row(out, "pass_001", "test_random")) == {101}
  assert set(_records_by_row(out, "pass_003", "test_random")) == {102, 103}
  assert not glob.glob(os.path.join(out, "pass_002", "test_random-*"))
  assert stats["random_rows_outside_test_periods"] == 1
  # A test_random row gets the statistics of its pass, like a test row: pass_003
  # counts (U1, 0) 6 rows, 4 clicks and (V1, 0) 6 rows, 3 clicks, prior 0.6.
  record = _records_by_row(out, "pass_003", "test_random")[103]
  assert record["user_tab_exposures"] == 6
  assert record["user_tab_clicks"] == 4
  assert record["video_tab_click_rate"] == pytest.approx(9 / 16, rel=1e-6)


def test_rerun_removes_stale_passes(hand_source, tmp_path):
  out = str(tmp_path / "out")
  kuairand.prepare(hand_source, out, split="passes", valid_fraction=0.0,
                   test_random=False, rows_per_shard=1)
  assert len(glob.glob(os.path.join(out, "pass_001", "train-*.tfrecord"))) == 5
  kuairand.prepare(hand_source, out, split="passes", pass_days=2, valid_fraction=0.0,
                   test_random=False)
  assert sorted(os.listdir(out)) == ["feature_config.json", "pass_001", "pass_002",
                                     "passes.json", "stats.json"]
  assert sorted(os.listdir(os.path.join(out, "pass_001"))) == [
      "test-00000-of-00001.tfrecord", "train-00000-of-00001.tfrecord",
      "valid-00000-of-00001.tfrecord"]


# ---------------------------------------------------------------------------
# Bad input.
# ---------------------------------------------------------------------------


def test_invalid_pass_options_rejected(hand_source, tmp_path):
  with pytest.raises(ValueError, match="pass_days must be an integer >= 1. Received: 0"):
    kuairand.prepare(hand_source, str(tmp_path / "a"), split="passes", pass_days=0)
  with pytest.raises(ValueError, match=r"valid_fraction must be in \[0, 1\). Received: 1.0"):
    kuairand.prepare(hand_source, str(tmp_path / "b"), split="passes", valid_fraction=1.0)
  with pytest.raises(ValueError, match="fallback_tab 3 is not a domain value"):
    kuairand.prepare(hand_source, str(tmp_path / "c"), split="passes", fallback_tab="3",
                     test_random=False)
  with pytest.raises(kuairand.InputError, match="no pass has a test period"):
    kuairand.prepare(hand_source, str(tmp_path / "d"), split="passes", pass_days=5,
                     test_random=False)
  for name in "abcd":
    assert not os.path.exists(tmp_path / name), name


def test_invalid_calendar_date_named(hand_ids, tmp_path):
  rows = _hand_rows(*hand_ids)
  rows[9]["date"] = 20220231
  src = str(tmp_path / "src")
  _write_hand_source(src, rows)
  # rows[9] is the second data row of the second log, so line 3.
  with pytest.raises(kuairand.InputError,
                     match=r"log_standard_4_22_to_5_08_pure\.csv, line 3: date 20220231 "
                     r"is not a calendar date"):
    kuairand.prepare(src, str(tmp_path / "out"), split="passes", test_random=False)


def test_no_fallback_drops_unknown_tab(hand_source, tmp_path):
  out = str(tmp_path / "out")
  stats = kuairand.prepare(hand_source, out, split="passes", valid_fraction=0.0,
                           fallback_tab="none", test_random=False)
  # r10 (tab 5) is a test row of pass_002 and a training row of pass_003.
  assert stats["passes"][1]["dropped_rows"] == {"test": 1}
  assert stats["passes"][2]["dropped_rows"] == {"train": 1}
  assert set(_records_by_row(out, "pass_003", "train")) == {9}
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  assert config.domain.values == [0, 1, -1]
  assert config.domain.fallback is None


def test_cli_prepare_passes(hand_source, tmp_path):
  out = str(tmp_path / "cli")
  result = subprocess.run(
      [sys.executable, "-m", "data.kuairand", "prepare", f"--src={hand_source}",
       f"--out={out}", "--split=passes", "--valid_fraction=0", "--notest_random"],
      cwd=base._REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "kuairand_pure (1-day passes from 2022-04-08): 3 passes" in result.stdout
  lines = [line.split() for line in result.stdout.splitlines()]
  assert ["pass_003", "2022-04-10", "2022-04-11", "2", "0", "1", "0", "0.6000"] in lines
  assert os.path.exists(os.path.join(out, "passes.json"))


@pytest.mark.parametrize("arguments, message", [
    (["--split=passes", "--train_end_date=20220420"],
     "apply only to --split=date and --split=random, not to --split=passes: "
     "--train_end_date"),
    (["--pass_days=2"], "apply only to --split=passes: --pass_days"),
])
def test_cli_rejects_flags_of_other_split(tmp_path, arguments, message):
  out = str(tmp_path / "cli")
  result = subprocess.run(
      [sys.executable, "-m", "data.kuairand", "prepare", f"--src={tmp_path}",
       f"--out={out}"] + arguments,
      cwd=base._REPO_ROOT, capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode != 0
  assert message in result.stderr
  assert not os.path.exists(out)


# ---------------------------------------------------------------------------
# Seeded log of test_kuairand.py, one-day passes.
# ---------------------------------------------------------------------------

_MIN_TAB_ROWS = 10
_VALID_FRACTION = 0.1
_SEED = 2023


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
  """Convert the seeded log to one-day passes and draw the expected split of rows."""
  base._tables_or_skip()
  src = str(tmp_path_factory.mktemp("passes_src"))
  rows = base._make_fixture(src)
  out = str(tmp_path_factory.mktemp("passes_out"))
  stats = kuairand.prepare(src, out, split="passes", min_tab_rows=_MIN_TAB_ROWS,
                           valid_fraction=_VALID_FRACTION, seed=_SEED, rows_per_shard=50)
  draws = np.random.default_rng(_SEED).random(len(rows["standard"]))
  for row, draw in zip(rows["standard"], draws):
    row["split"] = "valid" if draw < _VALID_FRACTION else "train"
  return out, stats, rows


def _dates(rows):
  return sorted({row["date"] for row in rows["standard"]})


def _expected_domain_of(rows):
  first = _dates(rows)[0]
  first_tabs = collections.Counter(row["tab"] for row in rows["standard"]
                                   if row["date"] == first and row["split"] == "train")
  kept_tabs = {tab for tab, count in first_tabs.items() if count >= _MIN_TAB_ROWS}
  return (lambda tab: tab if tab in kept_tabs else -1), sorted(kept_tabs), first_tabs


def test_daily_one_pass_per_date(daily):
  out, _, rows = daily
  dates = _dates(rows)
  # The fixture has a row on every day from 04-08 to 05-08.
  assert len(dates) == 31
  with open(os.path.join(out, "passes.json"), encoding="utf-8") as handle:
    manifest = json.load(handle)
  assert [entry["name"] for entry in manifest["passes"]] == [
      f"pass_{index:03d}" for index in range(1, 31)]
  for entry, date, next_date in zip(manifest["passes"], dates, dates[1:]):
    iso = f"{date // 10000}-{date // 100 % 100:02d}-{date % 100:02d}"
    next_iso = f"{next_date // 10000}-{next_date // 100 % 100:02d}-{next_date % 100:02d}"
    assert (entry["start"], entry["test_start"]) == (iso, next_iso)
    assert entry["end"] == entry["test_start"]


def test_daily_domains(daily):
  out, stats, rows = daily
  _, kept_tabs, first_tabs = _expected_domain_of(rows)
  # Some first-day tabs are too small and merged, so -1 is in use.
  assert set(first_tabs) - set(kept_tabs)
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  assert config.domain.values == kept_tabs + [-1]
  assert stats["domains"]["merged_tabs"] == sorted(set(first_tabs) - set(kept_tabs))


def test_daily_train_valid_disjoint_complete(daily):
  out, _, rows = daily
  dates = _dates(rows)
  for index, date in enumerate(dates[:-1], start=1):
    pass_dir = os.path.join(out, f"pass_{index:03d}")
    train = [record["time_ms"] for record in base._read_records(pass_dir, "train")]
    valid = [record["time_ms"] for record in base._read_records(pass_dir, "valid")]
    assert len(train) == len(set(train))
    assert not set(train) & set(valid)
    day_rows = [row for row in rows["standard"] if row["date"] == date]
    assert set(train) == {row["time_ms"] for row in day_rows if row["split"] == "train"}
    assert set(valid) == {row["time_ms"] for row in day_rows if row["split"] == "valid"}


def test_daily_test_is_next_period(daily):
  out, stats, rows = daily
  dates = _dates(rows)
  for index, next_date in enumerate(dates[1:], start=1):
    pass_dir = os.path.join(out, f"pass_{index:03d}")
    test = [record["time_ms"] for record in base._read_records(pass_dir, "test")]
    assert sorted(test) == sorted(row["time_ms"] for row in rows["standard"]
                                  if row["date"] == next_date), index
    test_random = {record["time_ms"]
                   for record in base._read_records(pass_dir, "test_random")}
    assert test_random == {row["time_ms"] for row in rows["random"]
                           if row["date"] == next_date}, index
    assert stats["passes"][index - 1]["rows"]["test"] == len(test)
  # The random log starts on 04-22, so the passes that test on earlier days have
  # no test_random shard.
  assert not glob.glob(os.path.join(out, "pass_001", "test_random-*"))


def test_daily_statistics_cumulative(daily):
  out, _, rows = daily
  domain_of, _, _ = _expected_domain_of(rows)
  dates = _dates(rows)
  for index, date in enumerate(dates[:-1], start=1):
    history = [row for row in rows["standard"]
               if row["date"] <= date and row["split"] == "train"]
    prior = np.mean([row["is_click"] for row in history])
    counts = {"user": collections.defaultdict(lambda: [0, 0]),
              "video": collections.defaultdict(lambda: [0, 0])}
    for row in history:
      for prefix in ("user", "video"):
        total = counts[prefix][(row[f"{prefix}_id"], domain_of(row["tab"]))]
        total[0] += 1
        total[1] += row["is_click"]
    pass_dir = os.path.join(out, f"pass_{index:03d}")
    for split in ("train", "valid", "test", "test_random"):
      for record in base._read_records(pass_dir, split):
        assert record["tab"] == domain_of(record["raw_tab"])
        base._check_row_statistics(record, counts, prior, is_train=split == "train")


def test_daily_duration_boundaries_from_first_pass(daily):
  out, _, rows = daily
  videos = base._read_table(kuairand.VIDEO_TABLE)
  first = _dates(rows)[0]
  durations = []
  for row in rows["standard"]:
    video = videos.get(row["video_id"])
    if row["date"] == first and row["split"] == "train" and video and \
        video["video_duration"]:
      durations.append(float(video["video_duration"]))
  config = features_lib.load(os.path.join(out, "feature_config.json"))
  np.testing.assert_allclose(
      config.feature("video_duration").boundaries,
      np.concatenate([[0.0], base._quantile_cuts(durations, kuairand.DEFAULT_NUM_BUCKETS)]),
      rtol=1e-6)


def test_daily_stats_json(daily):
  out, stats, rows = daily
  with open(os.path.join(out, "stats.json"), encoding="utf-8") as handle:
    saved = json.load(handle)
  assert saved["layout"] == "passes"
  assert saved["options"]["valid_fraction"] == _VALID_FRACTION
  first_pass = saved["passes"][0]
  first = _dates(rows)[0]
  day_train = [row for row in rows["standard"]
               if row["date"] == first and row["split"] == "train"]
  assert first_pass["rows"]["train"] == len(day_train)
  assert first_pass["train_click_rate_cumulative"] == pytest.approx(
      np.mean([row["is_click"] for row in day_train]), abs=1e-6)
  assert first_pass["splits"]["train"]["positive_rate"]["long_view"] == pytest.approx(
      np.mean([row["long_view"] for row in day_train]), abs=1e-6)
  assert saved["random_rows_outside_test_periods"] == 0
  assert stats["passes"] == saved["passes"]


def test_pass_runner_trains_daily_passes(daily, tmp_path):
  from pepnet_tf import passes  # pylint: disable=g-import-not-at-top
  from pepnet_tf import training  # pylint: disable=g-import-not-at-top

  out, _, _ = daily
  template = training.TrainConfig(model_dir="", batch_size=64, epochs=1, hidden_units=[8],
                                  shuffle_buffer=256, admission_window=2, verbose=0)
  root = str(tmp_path / "runs")
  summaries = passes.run_passes(template, out, root, last=2)
  assert [summary["name"] for summary in summaries] == ["pass_001", "pass_002"]
  assert summaries[1]["warm_start_from"] == os.path.join(root, "pass_001")
  for summary in summaries:
    for task in kuairand.TASKS:
      assert f"auc/{task}" in summary["test_metrics"]
    for name in kuairand.PRIOR_FEATURES:
      table = summary["tables"][name]
      assert table["table_size"] == table["vocabulary_size"] + 8
  # The unknown author (-1) is never admitted, so it maps to an OOV bucket.
  config = features_lib.load(os.path.join(root, "pass_002", "feature_config.json"))
  author = config.feature("author_id")
  assert kuairand.UNKNOWN_AUTHOR not in config.vocabulary_of(author)
  exports = glob.glob(os.path.join(root, "pass_002", "export", "*", "saved_model.pb"))
  assert len(exports) == 1
