"""Feature config loading and validation: every rule fails with a clear error."""

import copy
import json
import os

from absl.testing import parameterized

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

from pepnet_tf import features

_VALID = {
    "name": "toy",
    "embedding_dim": 8,
    "domain": {"feature": "page", "values": ["home", "search"]},
    "user_id_feature": "user_id",
    "features": [
        {"name": "user_id", "group": "prior", "hash_buckets": 100},
        {"name": "age", "group": "general", "dtype": "float32", "boundaries": [18, 30]},
        {"name": "rate", "group": "domain_side", "dtype": "float32", "boundaries": [0.5]},
        {"name": "page", "group": "domain", "dtype": "string"},
        {"name": "click", "group": "label"},
    ],
}


def _with(change):
  raw = copy.deepcopy(_VALID)
  change(raw)
  return raw


def _feature(raw, name):
  return next(item for item in raw["features"] if item["name"] == name)


class FeatureConfigTest(tf.test.TestCase, parameterized.TestCase):

  def test_valid_config_groups(self):
    config = features.from_dict(_VALID)
    self.assertEqual([spec.name for spec in config.prior], ["user_id"])
    self.assertEqual([spec.name for spec in config.general], ["age"])
    self.assertEqual([spec.name for spec in config.domain_side], ["rate"])
    self.assertEqual(config.task_names, ["click"])
    self.assertEqual(config.num_domains, 2)
    self.assertEqual([spec.name for spec in config.input_features],
                     ["user_id", "age", "rate", "page"])

  def test_save_and_load_round_trip(self):
    path = os.path.join(self.get_temp_dir(), "config.json")
    features.from_dict(_VALID).save(path)
    loaded = features.load(path)
    self.assertEqual(loaded.to_dict(), features.from_dict(_VALID).to_dict())

  def test_vocabulary_file_relative_to_config(self):
    directory = self.get_temp_dir()
    with open(os.path.join(directory, "users.txt"), "w") as handle:
      handle.write("7\n3\n\n11\n")
    raw = _with(lambda raw: _feature(raw, "user_id").update(
        hash_buckets=None, vocabulary_file="users.txt"))
    _feature(raw, "user_id").pop("hash_buckets")
    path = os.path.join(directory, "config.json")
    with open(path, "w") as handle:
      json.dump(raw, handle)
    config = features.load(path)
    self.assertEqual(config.vocabulary_of(config.feature("user_id")), [7, 3, 11])

  @parameterized.named_parameters(
      ("unknown_group", lambda raw: _feature(raw, "age").update(group="context"),
       "Unknown group 'context'"),
      ("empty_prior", lambda raw: raw["features"].pop(0), "prior group is empty"),
      ("no_domain_feature",
       lambda raw: _feature(raw, "page").update(group="general", vocabulary=["a"]),
       "No feature has group 'domain'"),
      ("duplicate_names", lambda raw: raw["features"].append(
          {"name": "age", "group": "general", "hash_buckets": 3}), "Duplicate feature names"),
      ("no_label", lambda raw: raw["features"].pop(), "No feature has group 'label'"),
      ("two_encodings", lambda raw: _feature(raw, "user_id").update(vocabulary=[1, 2]),
       "exactly one of"),
      ("float_without_boundaries", lambda raw: _feature(raw, "age").pop("boundaries"),
       "needs exactly one of"),
      ("unsorted_boundaries", lambda raw: _feature(raw, "age").update(boundaries=[30, 18]),
       "sorted boundaries"),
      ("string_label", lambda raw: _feature(raw, "click").update(dtype="string"),
       "must be int64 or float32"),
      ("unknown_dtype", lambda raw: _feature(raw, "age").update(dtype="float64"),
       "Unknown dtype 'float64'"),
      ("domain_values_wrong_type",
       lambda raw: raw["domain"].update(values=[1, 2]), "must be string"),
      ("duplicate_domain_values",
       lambda raw: raw["domain"].update(values=["home", "home"]), "duplicates"),
      ("fallback_not_a_domain",
       lambda raw: raw["domain"].update(fallback="video"), "fallback 'video'"),
      ("bad_unknown_policy",
       lambda raw: raw["domain"].update(on_unknown="ignore"), "on_unknown"),
      ("domain_feature_mismatch",
       lambda raw: raw["domain"].update(feature="tab"), "domain.feature is 'tab'"),
      ("unknown_top_level_key", lambda raw: raw.update(embeding_dim=4), "embeding_dim"),
      ("unknown_feature_key",
       lambda raw: _feature(raw, "age").update(buckets=[1]), "Unknown keys in features"),
      ("zero_embedding_dim", lambda raw: raw.update(embedding_dim=0), "embedding_dim"),
      ("user_id_feature_unknown",
       lambda raw: raw.update(user_id_feature="uid"), "user_id_feature 'uid'"),
      ("no_gate_input_for_epnet", lambda raw: (
          raw["features"].pop(2), raw["domain"].update(embed=False)), "EPNet's gate"),
  )
  def test_invalid_config_raises(self, change, message):
    with self.assertRaisesRegex(features.FeatureConfigError, message):
      features.from_dict(_with(change))

  def test_missing_file_raises(self):
    with self.assertRaisesRegex(features.FeatureConfigError, "Cannot read feature config"):
      features.load(os.path.join(self.get_temp_dir(), "absent.json"))

  def test_invalid_json_raises(self):
    path = os.path.join(self.get_temp_dir(), "broken.json")
    with open(path, "w") as handle:
      handle.write("{not json")
    with self.assertRaisesRegex(features.FeatureConfigError, "not valid JSON"):
      features.load(path)

  def test_check_columns_names_missing(self):
    config = features.from_dict(_VALID)
    with self.assertRaisesRegex(features.FeatureConfigError, r"\['rate'\].*train.csv"):
      features.check_columns(config, ["user_id", "age", "page", "click"], "train.csv")


if __name__ == "__main__":
  tf.test.main()
