"""Incremental training in passes: a warm start carries rows and optimizer state exactly."""

import csv
import json
import os
import re
import shutil
import tempfile

import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

import synthetic
from pepnet_tf import features as features_lib
from pepnet_tf import training
from pepnet_tf import warm_start as warm_start_lib

_SEED = 7
# Pass 2 shifts every user id by this much: ids 0-9 leave, 10-39 stay, 40-49 arrive.
_SHIFT = 10


def _write_pass(directory, seed, user_shift):
  """A synthetic pass whose user ids are admitted from counts (one OOV bucket)."""
  paths = synthetic.write_dataset(directory, "csv", sizes=(600, 200, 200), seed=seed)
  for split in ("train", "valid", "test"):
    with open(paths[split], encoding="utf-8") as handle:
      rows = list(csv.DictReader(handle))
    for row in rows:
      row["user_id"] = str(int(row["user_id"]) + user_shift)
    with open(paths[split], "w", encoding="utf-8", newline="") as handle:
      writer = csv.DictWriter(handle, fieldnames=synthetic.COLUMNS)
      writer.writeheader()
      writer.writerows(rows)
  config = synthetic.feature_config("csv")
  config["features"][0] = {"name": "user_id", "group": "prior", "min_frequency": 1}
  with open(paths["feature_config"], "w", encoding="utf-8") as handle:
    json.dump(config, handle)
  return paths


def _users(path):
  with open(path, encoding="utf-8") as handle:
    return {int(row["user_id"]) for row in csv.DictReader(handle)}


def _config(paths, model_dir, **overrides):
  values = dict(
      model_dir=model_dir, feature_config=paths["feature_config"],
      train_files=[paths["train"]], valid_files=[paths["valid"]],
      test_files=[paths["test"]], batch_size=64, epochs=2, patience=10,
      hidden_units=[8, 4], shuffle_buffer=256, admission_window=1, seed=_SEED,
      export=False, verbose=0)
  values.update(overrides)
  return training.TrainConfig(**values)


def _vocabulary(model_dir, name):
  config = features_lib.load(os.path.join(model_dir, "feature_config.json"))
  return config.vocabulary_of(config.feature(name))


class WarmStartTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="pepnet_passes_")
    cls.first = _write_pass(os.path.join(cls.root, "pass1"), seed=0, user_shift=0)
    cls.second = _write_pass(os.path.join(cls.root, "pass2"), seed=3, user_shift=_SHIFT)
    cls.first_dir = os.path.join(cls.root, "run1")
    cls.second_dir = os.path.join(cls.root, "run2")
    training.train(_config(cls.first, cls.first_dir))
    cls.result = training.train(_config(cls.second, cls.second_dir, epochs=1, export=True,
                                        warm_start_from=cls.first_dir))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _checkpoints(self):
    previous = tf.train.load_checkpoint(
        tf.train.latest_checkpoint(os.path.join(self.first_dir, "best")))
    seeded = tf.train.load_checkpoint(
        os.path.join(self.second_dir, training.WARM_START_DIR, "ckpt-1"))
    return previous, seeded

  def _accumulator_key(self, domain, model_dir, name):
    # Adagrad slots are numbered after the step counter in lookup order.
    model, _, _ = training.load_trained_model(model_dir)
    position = model.embeddings.lookup_order.index(name)
    return (f"embedding_optimizer/optimizers/{domain}/_variables/{position + 1}"
            "/.ATTRIBUTES/VARIABLE_VALUE")

  def test_admission_report_matches_data(self):
    old_users = _users(self.first["train"])
    new_users = _users(self.second["train"])
    self.assertCountEqual(_vocabulary(self.first_dir, "user_id"), old_users)
    self.assertCountEqual(_vocabulary(self.second_dir, "user_id"), new_users)
    entry = self.result["admission"]["features"]["user_id"]
    self.assertEqual(entry["carried"], len(old_users & new_users))
    self.assertEqual(entry["admitted"], len(new_users - old_users))
    self.assertEqual(entry["evicted"], len(old_users - new_users))
    self.assertEqual(self.result["admission"]["pass"], 2)
    self.assertEqual(self.result["warm_start"]["user_id"],
                     {"carried_rows": 1 + len(old_users & new_users),
                      "new_rows": len(new_users - old_users)})

  def test_carried_rows_are_exact(self):
    previous, seeded = self._checkpoints()
    old_vocabulary = _vocabulary(self.first_dir, "user_id")
    new_vocabulary = _vocabulary(self.second_dir, "user_id")
    key = "model/embeddings/table_user_id/.ATTRIBUTES/VARIABLE_VALUE"
    old_table, new_table = previous.get_tensor(key), seeded.get_tensor(key)
    carried = sorted(set(old_vocabulary) & set(new_vocabulary))
    self.assertNotEmpty(carried)
    old_rows = [1 + old_vocabulary.index(user) for user in carried]
    new_rows = [1 + new_vocabulary.index(user) for user in carried]
    # Row 0 is the single OOV bucket in both passes.
    np.testing.assert_array_equal(new_table[[0] + new_rows], old_table[[0] + old_rows])
    for domain in range(len(synthetic.DOMAINS)):
      old_key = self._accumulator_key(domain, self.first_dir, "user_id")
      new_key = self._accumulator_key(domain, self.second_dir, "user_id")
      np.testing.assert_array_equal(seeded.get_tensor(new_key)[[0] + new_rows],
                                    previous.get_tensor(old_key)[[0] + old_rows])
      # Training moved the accumulators away from their initial 0.1.
      self.assertGreater(previous.get_tensor(old_key)[old_rows].max(), 0.1)

  def test_new_ids_start_at_initializer(self):
    _, seeded = self._checkpoints()
    old_vocabulary = _vocabulary(self.first_dir, "user_id")
    new_vocabulary = _vocabulary(self.second_dir, "user_id")
    new_ids = [user for user in new_vocabulary if user not in old_vocabulary]
    self.assertNotEmpty(new_ids)
    rows = [1 + new_vocabulary.index(user) for user in new_ids]
    # A fresh model of the same seed and vocabularies starts with these rows.
    feature_config = features_lib.load(os.path.join(self.second_dir, "feature_config.json"))
    config = _config(self.second, self.second_dir)
    tf.keras.utils.set_random_seed(config.seed)
    fresh = training.build_model(config, feature_config)
    fresh(training._example_batch(feature_config))  # pylint: disable=protected-access
    table = seeded.get_tensor("model/embeddings/table_user_id/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_array_equal(
        table[rows], fresh.embeddings.tables["user_id"].numpy()[rows])
    for domain in range(len(synthetic.DOMAINS)):
      key = self._accumulator_key(domain, self.second_dir, "user_id")
      np.testing.assert_array_equal(seeded.get_tensor(key)[rows],
                                    np.full((len(rows), 4), 0.1, np.float32))

  def test_dense_weights_are_copied(self):
    previous, seeded = self._checkpoints()
    copied = [key for key, _ in tf.train.list_variables(
        os.path.join(self.second_dir, training.WARM_START_DIR, "ckpt-1"))
              if key.startswith(("model/", "optimizer/")) and "table_user_id" not in key
              and ("kernel" in key or "bias" in key or "table_" in key
                   or key.startswith("optimizer/_"))
              and "learning_rate" not in key]
    self.assertGreater(len(copied), 20)
    for key in copied:
      np.testing.assert_array_equal(seeded.get_tensor(key), previous.get_tensor(key),
                                    err_msg=key)

  def test_export_serves_carried_and_new_ids(self):
    model, feature_config, _ = training.load_trained_model(self.second_dir)
    old_users = _users(self.first["train"])
    new_users = _users(self.second["train"])
    carried = min(old_users & new_users)
    new = min(new_users - old_users)
    evicted = min(old_users - new_users)
    unseen = 10_000
    ids = model.embeddings.lookups["user_id"](
        tf.constant([carried, new, evicted, unseen], tf.int64)).numpy()
    self.assertGreater(ids[0], 0)
    self.assertGreater(ids[1], 0)
    np.testing.assert_array_equal(ids[2:], [0, 0])

    batch = {
        "user_id": tf.constant([carried, new, evicted, unseen], tf.int64),
        "item_id": tf.constant([5] * 4, tf.int64),
        "age": tf.constant([33.0] * 4),
        "city": tf.constant(["north"] * 4),
        "item_rate": tf.constant([0.4] * 4),
        "page": tf.constant(["home"] * 4),
    }
    served = training.savedmodel_scorer(self.result["export_path"])(batch)
    expected = model(batch, training=False)
    for task in feature_config.task_names:
      scores = np.asarray(served[task])
      self.assertAllClose(scores, expected[task].numpy(), atol=1e-6)
      # The evicted id scores as any unknown id does; the carried one has its own row.
      self.assertEqual(scores[2], scores[3])
      self.assertNotEqual(scores[0], scores[3])

  def test_second_pass_outputs_complete(self):
    with open(os.path.join(self.second_dir, "eval", "test_metrics.json")) as handle:
      metrics = json.load(handle)
    for task in ("click", "like"):
      for key in [f"auc/{task}", f"gauc/{task}", f"logloss/{task}"] + [
          f"auc/{task}/domain_{domain}" for domain in range(len(synthetic.DOMAINS))]:
        self.assertTrue(np.isfinite(metrics[key]), key)
    export = self.result["export_path"]
    self.assertTrue(os.path.exists(os.path.join(export, "saved_model.pb")))
    self.assertTrue(os.path.exists(os.path.join(export, "assets.extra",
                                                "tf_serving_warmup_requests")))
    report = json.load(open(os.path.join(self.second_dir, "admission", "report.json")))
    self.assertEqual(report["features"]["user_id"]["vocabulary_size"],
                     len(_users(self.second["train"])))

  def test_changed_architecture_raises(self):
    config = _config(self.second, tempfile.mkdtemp(dir=self.get_temp_dir()),
                     hidden_units=[16, 4], warm_start_from=self.first_dir)
    with self.assertRaisesRegex(warm_start_lib.IncompatibleModelError,
                                r"hidden_units: \[8, 4\] -> \[16, 4\]"):
      training.train(config)

  def test_changed_boundaries_raise(self):
    data_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    paths = _write_pass(data_dir, seed=4, user_shift=0)
    raw = json.load(open(paths["feature_config"]))
    raw["features"][2]["boundaries"] = [25.0, 45.0]
    json.dump(raw, open(paths["feature_config"], "w"))
    config = _config(paths, os.path.join(data_dir, "run"), warm_start_from=self.first_dir)
    with self.assertRaisesRegex(warm_start_lib.IncompatibleModelError, r"age\.boundaries"):
      training.train(config)

  def test_warm_start_under_mirrored_strategy(self):
    model_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    result = training.train(_config(self.second, model_dir, epochs=1, strategy="mirrored",
                                    warm_start_from=self.first_dir))
    self.assertEqual(result["warm_start"], self.result["warm_start"])
    self.assertIn("auc/click", result["test_metrics"])

  def test_warm_start_under_parameter_server_raises(self):
    config = _config(self.second, tempfile.mkdtemp(dir=self.get_temp_dir()),
                     strategy="parameter_server", warm_start_from=self.first_dir)
    with self.assertRaisesRegex(ValueError, "not supported under strategy 'parameter_server'"):
      config.validate()

  def test_missing_previous_run_raises(self):
    config = _config(self.second, tempfile.mkdtemp(dir=self.get_temp_dir()),
                     warm_start_from=os.path.join(self.root, "no_such_run"))
    with self.assertRaisesRegex(ValueError, "no_such_run' does not exist"):
      training.train(config)
    config.warm_start_from = self.root
    with self.assertRaisesRegex(ValueError, "not the model_dir of a training run"):
      training.train(config)

  def test_rerun_keeps_first_admission_settings(self):
    model_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    training.train(_config(self.second, model_dir, epochs=1, warm_start_from=self.first_dir))
    with self.assertLogs(level="WARNING") as logs:
      result = training.train(_config(self.second, model_dir, epochs=1, admission_window=3,
                                      warm_start_from=None))
    self.assertTrue(any("already admitted its vocabularies" in line for line in logs.output))
    saved = json.load(open(os.path.join(model_dir, "config.json")))["train"]
    self.assertEqual(saved["admission_window"], 1)
    self.assertEqual(saved["warm_start_from"], self.first_dir)
    self.assertEqual(result["admission"]["window"], 1)


def _slot_name(slot):
  """The slot's name without the optimizer's and the model's name scopes."""
  return re.sub(r"^([\w-]+/)?(m|v|accumulator)/(pep_net(_\d+)?/)?", r"\2/", slot.name)


class OptimizerStateOrderTest(tf.test.TestCase):

  def test_built_slots_match_training(self):
    data_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    paths = synthetic.write_dataset(data_dir, "csv", sizes=(200, 50, 50))
    feature_config = features_lib.load(paths["feature_config"])
    for mode in ("per_domain", "adam"):
      with self.subTest(mode=mode):
        config = _config(paths, data_dir, embedding_optimizer=mode)
        trained = training.build_model(config, feature_config)
        dataset = training.input_lib.make_dataset(feature_config, [paths["train"]], 64,
                                                  training=False)
        trained.fit(dataset, epochs=1, steps_per_epoch=4, verbose=0)
        path = training.make_checkpoint(trained).save(os.path.join(data_dir, mode, "ckpt"))

        restored = training.restore_model(config, feature_config, path, optimizer_state=True)
        optimizers = [(trained.optimizer, restored.optimizer)]
        if mode == "per_domain":
          optimizers += list(zip(trained.embedding_optimizer.optimizers,
                                 restored.embedding_optimizer.optimizers))
        for original, copy in optimizers:
          # The same slot, by name and position, has the same values.
          self.assertEqual([_slot_name(slot) for slot in original.variables],
                           [_slot_name(slot) for slot in copy.variables])
          for slot, restored_slot in zip(original.variables, copy.variables):
            np.testing.assert_array_equal(slot.numpy(), restored_slot.numpy(),
                                          err_msg=slot.name)


if __name__ == "__main__":
  tf.test.main()
