"""Admission of vocabularies from counts, the sliding window, eviction and OOV hashing."""

import json
import os
import tempfile

import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

from pepnet_tf import admission
from pepnet_tf import embedding
from pepnet_tf import features as features_lib


def _config(user_spec=None, item_spec=None, base_dir=""):
  user = {"name": "user_id", "group": "prior", "min_frequency": 2, "num_oov_buckets": 3}
  item = {"name": "item", "group": "general", "dtype": "string", "min_frequency": 1}
  user.update(user_spec or {})
  item.update(item_spec or {})
  return features_lib.from_dict({
      "format": "csv",
      "embedding_dim": 4,
      "domain": {"feature": "page", "values": ["a", "b"]},
      "features": [
          user, item,
          {"name": "rate", "group": "domain_side", "dtype": "float32", "boundaries": [0.5]},
          {"name": "page", "group": "domain", "dtype": "string"},
          {"name": "click", "group": "label"},
      ],
  }, base_dir=base_dir)


def _write_rows(path, users, items):
  """One CSV row per (user, item) pair; the other columns do not matter here."""
  with open(path, "w", encoding="utf-8") as handle:
    handle.write("user_id,item,rate,page,click\n")
    for index, (user, item) in enumerate(zip(users, items)):
      handle.write(f"{user},{item},0.25,{'ab'[index % 2]},{index % 2}\n")
  return path


class AdmitTest(tf.test.TestCase):

  def test_threshold_and_order(self):
    counts = {"d": 1, "c": 3, "a": 5, "b": 3}
    self.assertEqual(admission.admit(counts, min_frequency=3), ["a", "b", "c"])
    self.assertEqual(admission.admit(counts, min_frequency=4), ["a"])
    self.assertEqual(admission.admit(counts), ["a", "b", "c", "d"])

  def test_max_size_keeps_the_most_frequent(self):
    counts = {7: 2, 3: 9, 5: 2, 1: 4}
    self.assertEqual(admission.admit(counts, max_size=3), [3, 1, 5])
    self.assertEqual(admission.admit(counts, min_frequency=3, max_size=5), [3, 1])

  def test_unknown_values_never_admitted(self):
    counts = {"": 9, "a": 2, "b": 1}
    self.assertEqual(admission.admit(counts, unknown_values=[""]), ["a", "b"])
    self.assertEqual(admission.admit({-1: 5, 4: 5}, unknown_values=[-1]), [4])

  def test_oov_share(self):
    counts = {1: 6, 2: 3, 3: 1}
    self.assertAlmostEqual(admission.oov_share(counts, [1]), 0.4)
    self.assertEqual(admission.oov_share(counts, [1, 2, 3]), 0.0)
    self.assertIsNone(admission.oov_share({}, [1]))


class CountAndAdmitTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    self.dir = tempfile.mkdtemp(dir=self.get_temp_dir())

  def test_count_values_matches_rows(self):
    path = _write_rows(os.path.join(self.dir, "rows.csv"),
                       [5, 5, 7, 5, 9, 7], ["x", "y", "x", "x", "z", "x"])
    counts = admission.count_values(_config(), [path], ["user_id", "item"])
    self.assertEqual(counts["user_id"], {5: 3, 7: 2, 9: 1})
    self.assertEqual(counts["item"], {"x": 4, "y": 1, "z": 1})

  def test_first_pass_admits_and_reports(self):
    train = _write_rows(os.path.join(self.dir, "train.csv"),
                        [1, 1, 1, 2, 2, 3, 4, 4], ["x"] * 7 + ["none"])
    test = _write_rows(os.path.join(self.dir, "test.csv"), [1, 3, 8, 2], ["x", "y", "x", "x"])
    run_dir = os.path.join(self.dir, "run")
    config = _config(item_spec={"unknown_values": ["none"]})
    result = admission.admit_vocabularies(config, [train], run_dir, window=2,
                                          test_files=[test])
    user = result.config.feature("user_id")
    self.assertEqual(result.config.vocabulary_of(user), [1, 2, 4])
    entry = result.report["features"]["user_id"]
    # 1 of 8 training rows (id 3) and 2 of 4 test rows (ids 3 and 8) are outside.
    self.assertAlmostEqual(entry["oov_share_train"], 1 / 8)
    self.assertAlmostEqual(entry["oov_share_test"], 2 / 4)
    self.assertEqual((entry["admitted"], entry["carried"], entry["evicted"]), (3, 0, 0))
    self.assertEqual(result.report["table_sizes"]["user_id"], 3 + 3)
    item = result.config.feature("item")
    self.assertEqual(result.config.vocabulary_of(item), ["x"])
    self.assertAlmostEqual(result.report["features"]["item"]["oov_share_train"], 1 / 8)
    self.assertEqual(result.report["table_sizes"]["rate"], 2)
    self.assertEqual(result.report["pass"], 1)
    self.assertEqual(admission.read_report(run_dir), json.loads(json.dumps(result.report)))
    self.assertEqual(admission.read_state(run_dir)["window_passes"], [1])

  def _run_passes(self, passes, window):
    previous = None
    results = []
    for number, users in enumerate(passes, start=1):
      train = _write_rows(os.path.join(self.dir, f"train{number}.csv"), users,
                          ["x"] * len(users))
      run_dir = os.path.join(self.dir, f"pass{number}")
      config = _config()
      result = admission.admit_vocabularies(config, [train], run_dir, window=window,
                                            previous_dir=previous)
      # The trainer saves the resolved config beside the admission files.
      result.config.save(os.path.join(run_dir, "feature_config.json"))
      results.append(result)
      previous = run_dir
    return results

  def test_window_sums_and_evicts(self):
    # min_frequency 2. Pass 1: ids 1 (x2), 2 (x2), 3 (x1). Pass 2: ids 3, 4, 4.
    # Pass 3: ids 5, 5. With a window of 2 passes:
    #   pass 2 counts {1: 2, 2: 2, 3: 2, 4: 2} -> all four admitted;
    #   pass 3 counts {3: 1, 4: 2, 5: 2} -> 4 and 5; 1, 2 and 3 evicted.
    results = self._run_passes([[1, 1, 2, 2, 3], [3, 4, 4], [5, 5]], window=2)
    vocabularies = [result.config.vocabulary_of(result.config.feature("user_id"))
                    for result in results]
    self.assertEqual(vocabularies, [[1, 2], [1, 2, 3, 4], [4, 5]])
    second, third = (result.report["features"]["user_id"] for result in results[1:])
    self.assertEqual((second["admitted"], second["carried"], second["evicted"]), (2, 2, 0))
    self.assertEqual((third["admitted"], third["carried"], third["evicted"]), (1, 1, 3))
    # Ids 1 and 2 were not seen in passes 2-3; id 3 was, once.
    self.assertEqual(third["evicted_unseen"], 2)
    self.assertEqual(results[2].report["window_passes"], [2, 3])
    self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "pass3", "admission", "counts"))),
                     ["pass_0002.json", "pass_0003.json"])

  def test_window_of_one_pass(self):
    results = self._run_passes([[1, 1, 2, 2], [2, 3, 3]], window=1)
    last = results[1]
    self.assertEqual(last.config.vocabulary_of(last.config.feature("user_id")), [3])
    self.assertEqual(last.report["features"]["user_id"]["evicted"], 2)

  def test_invalid_window_raises(self):
    with self.assertRaisesRegex(ValueError, "window must be an integer >= 1"):
      admission.admit_vocabularies(_config(), [], None, window=0)

  def test_large_vocabulary_round_trips(self):
    count = 1500
    users = list(range(count)) * 2
    items = [f"item{index}" for index in range(count)] + [""] * count
    train = _write_rows(os.path.join(self.dir, "big.csv"), users, items)
    run_dir = os.path.join(self.dir, "run")
    result = admission.admit_vocabularies(_config(item_spec={"default": ""}), [train], run_dir)
    user = result.config.feature("user_id")
    self.assertLen(result.config.vocabulary_of(user), count)
    item = result.config.feature("item")
    self.assertEqual(item.vocabulary[0], "")
    # The saved config reloads with the same vocabularies, also without its directory.
    path = os.path.join(run_dir, "feature_config.json")
    result.config.save(path)
    for reloaded in (features_lib.load(path),
                     features_lib.from_dict(result.config.to_dict())):
      self.assertEqual(reloaded.vocabulary_of(reloaded.feature("user_id")),
                       result.config.vocabulary_of(user))
      self.assertEqual(reloaded.vocabulary_of(reloaded.feature("item")), item.vocabulary)


class OovHashingTest(tf.test.TestCase):

  def test_unknown_ids_share_hashed_buckets(self):
    config = _config(user_spec={"vocabulary": [10, 20, 30], "num_oov_buckets": 4},
                     item_spec={"vocabulary": ["x"]})
    layer = embedding.FeatureEmbeddings(config)
    values = tf.constant([10, 20, 30] + list(range(1000, 1100)), tf.int64)
    ids = layer.lookups["user_id"](values).numpy()
    np.testing.assert_array_equal(ids[:3], [4, 5, 6])
    oov = ids[3:]
    self.assertTrue(np.all((oov >= 0) & (oov < 4)))
    # Hashing spreads 100 unknown ids over every bucket, the same way every time.
    self.assertLen(set(oov.tolist()), 4)
    np.testing.assert_array_equal(layer.lookups["user_id"](values).numpy(), ids)
    self.assertEqual(layer.table_sizes["user_id"], 3 + 4)

  def test_string_ids_hash_into_buckets(self):
    config = _config(user_spec={"vocabulary": [1]},
                     item_spec={"vocabulary": ["x"], "num_oov_buckets": 3})
    layer = embedding.FeatureEmbeddings(config)
    ids = layer.lookups["item"](tf.constant(["x"] + [f"u{i}" for i in range(60)])).numpy()
    self.assertEqual(ids[0], 3)
    self.assertEqual(set(ids[1:].tolist()), {0, 1, 2})

  def test_unresolved_config_raises(self):
    with self.assertRaisesRegex(features_lib.FeatureConfigError,
                                r"\['user_id', 'item'\] admit their vocabulary"):
      embedding.FeatureEmbeddings(_config())


class AdmissionConfigTest(tf.test.TestCase):

  def test_invalid_admission_fields_raise(self):
    cases = [
        ({"min_frequency": 0}, "min_frequency >= 1"),
        ({"max_vocabulary_size": -3}, "max_vocabulary_size >= 1"),
        ({"min_frequency": True}, "min_frequency >= 1"),
        ({"hash_buckets": 10}, "admission applies to vocabularies only"),
        ({"vocabulary": [1], "vocabulary_file": "v.txt"}, "at most one of vocabulary"),
        ({"unknown_values": ["x"]}, r"must be int64 values"),
        ({"unknown_values": -1}, "needs unknown_values as a list"),
        ({"min_frequency": None, "vocabulary": [1], "unknown_values": [-1]},
         "apply only to a vocabulary admitted"),
    ]
    for spec, message in cases:
      with self.subTest(spec=spec):
        with self.assertRaisesRegex(features_lib.FeatureConfigError, message):
          _config(user_spec=spec)

  def test_admission_of_a_label_raises(self):
    with self.assertRaisesRegex(features_lib.FeatureConfigError, "takes no encoding"):
      features_lib.from_dict({
          "domain": {"feature": "page", "values": ["a"]},
          "features": [
              {"name": "user_id", "group": "prior", "hash_buckets": 8},
              {"name": "age", "group": "general", "hash_buckets": 8},
              {"name": "page", "group": "domain", "dtype": "string"},
              {"name": "click", "group": "label", "min_frequency": 2},
          ]})

  def test_resolved_config_round_trips(self):
    config = _config(user_spec={"vocabulary": [3, 1]})
    self.assertFalse(config.feature("user_id").needs_admission)
    self.assertTrue(config.needs_admission)  # "item" is not resolved yet
    self.assertTrue(config.feature("user_id").admits_from_counts)
    again = features_lib.from_dict(config.to_dict())
    self.assertEqual(again.feature("user_id").min_frequency, 2)
    self.assertEqual(again.vocabulary_of(again.feature("user_id")), [3, 1])


if __name__ == "__main__":
  tf.test.main()
