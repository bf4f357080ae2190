"""Whole training runs on a tiny synthetic dataset: outputs, resume and the CLIs."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

from absl.testing import parameterized
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

import synthetic
from pepnet_tf import training

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Real rows of Taobao's Ali-CCP (100 train, 50 validation, 50 test), a second schema.
_ALI_CCP_DIR = os.environ.get(
    "PEPNET_TF_ALI_CCP_SAMPLE",
    os.path.join(_REPO_ROOT, "..", "shared", "data", "ali_ccp_sample"))


def _config(paths, model_dir, **overrides):
  values = dict(
      model_dir=model_dir,
      feature_config=paths["feature_config"],
      train_files=[paths["train"]],
      valid_files=[paths["valid"]],
      test_files=[paths["test"]],
      batch_size=64,
      epochs=3,
      patience=10,
      hidden_units=[8, 4],
      shuffle_buffer=256,
      export=False,
      verbose=0)
  values.update(overrides)
  return training.TrainConfig(**values)


def _checkpoint_values(directory):
  path = tf.train.latest_checkpoint(directory)
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith("_CHECKPOINTABLE_OBJECT_GRAPH")
          and "save_counter" not in name}


class TrainTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix="pepnet_synthetic_")
    cls.paths = {fmt: synthetic.write_dataset(os.path.join(cls.data_dir, fmt), fmt)
                 for fmt in ("csv", "tfrecord")}

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def _new_dir(self):
    return tempfile.mkdtemp(dir=self.get_temp_dir())

  @parameterized.named_parameters(("csv", "csv"), ("tfrecord", "tfrecord"))
  def test_run_writes_metrics_and_export(self, file_format):
    model_dir = self._new_dir()
    # Exporting costs seconds, so only the TFRecord case exports; the CSV case reads
    # the files every epoch instead of caching them in memory.
    export = file_format == "tfrecord"
    result = training.train(_config(self.paths[file_format], model_dir, export=export,
                                    cache_in_memory=export))

    with open(os.path.join(model_dir, "eval", "test_metrics.json")) as handle:
      metrics = json.load(handle)
    for task in ("click", "like"):
      for key in (f"auc/{task}", f"gauc/{task}", f"logloss/{task}"):
        self.assertIn(key, metrics)
      for domain in range(3):
        self.assertIn(f"auc/{task}/domain_{domain}", metrics)
    # The labels follow a learnable rule: three epochs beat a coin flip.
    self.assertGreater(metrics["auc/click"], 0.6)
    self.assertEqual(result["test_metrics"], metrics)

    saved = json.load(open(os.path.join(model_dir, "config.json")))
    self.assertEqual(saved["train"]["hidden_units"], [8, 4])
    self.assertTrue(os.path.exists(os.path.join(model_dir, "feature_config.json")))
    self.assertNotEmpty(tf.io.gfile.glob(os.path.join(model_dir, "logs", "*")))

    if not export:
      self.assertNotIn("export_path", result)
      return
    loaded = tf.saved_model.load(result["export_path"])
    self.assertCountEqual(loaded.signatures.keys(), ["serving_default", "serving_tf_example"])
    # The exported model scores the test split exactly as the restored best model does.
    exported_metrics = training.evaluate_dataset(
        training.savedmodel_scorer(result["export_path"]),
        training.features_lib.load(self.paths[file_format]["feature_config"]),
        training.input_lib.make_dataset(
            training.features_lib.load(self.paths[file_format]["feature_config"]),
            [self.paths[file_format]["test"]], 64, training=False))
    self.assertAllClose(exported_metrics["auc/click"], metrics["auc/click"], atol=1e-6)

  def test_resume_matches_uninterrupted_run(self):
    paths = self.paths["tfrecord"]
    uninterrupted = self._new_dir()
    training.train(_config(paths, uninterrupted, epochs=3))

    resumed = self._new_dir()
    training.train(_config(paths, resumed, epochs=1))
    finished = training.train(_config(paths, resumed, epochs=3))

    expected = _checkpoint_values(os.path.join(uninterrupted, "checkpoints"))
    actual = _checkpoint_values(os.path.join(resumed, "checkpoints"))
    self.assertCountEqual(expected, actual)
    # Weights, Adam moments, every domain's Adagrad accumulators and step counters.
    self.assertTrue(any("adagrad_domain_2" in name or "optimizers/2" in name
                        for name in expected), sorted(expected)[:20])
    for name in expected:
      self.assertAllEqual(actual[name], expected[name], msg=name)

    # A rerun after the last epoch trains nothing and reports the same metrics.
    rerun = training.train(_config(paths, resumed, epochs=3))
    after_rerun = _checkpoint_values(os.path.join(resumed, "checkpoints"))
    for name in actual:
      self.assertAllEqual(after_rerun[name], actual[name], msg=name)
    self.assertEqual(rerun["test_metrics"], finished["test_metrics"])

  def test_early_stopping_counts_survive_restart(self):
    model_dir = self._new_dir()
    variable = tf.Variable(0.0)
    checkpoint = tf.train.Checkpoint(value=variable)
    model = tf.keras.Sequential()

    def run_epochs(first_epoch, values):
      callback = training.EpochCheckpoint(checkpoint, model_dir, patience=2)
      callback.load_state()
      callback.set_model(model)
      model.stop_training = False
      for epoch, value in enumerate(values, start=first_epoch):
        variable.assign(value)
        callback.on_epoch_end(epoch, {"val_auc_mean": value})
        if model.stop_training:
          return callback, epoch + 1
      return callback, None

    # Best at epoch 2; the process restarts after epoch 3.
    _, stopped_at = run_epochs(0, [0.60, 0.70, 0.65])
    self.assertIsNone(stopped_at)
    callback, stopped_at = run_epochs(3, [0.64, 0.90])
    self.assertEqual(stopped_at, 4)  # two epochs without a better value
    self.assertEqual(callback.state["best_epoch"], 2)
    self.assertTrue(callback.state["stopped"])
    best = tf.train.load_checkpoint(callback.best_manager.latest_checkpoint)
    self.assertAllClose(best.get_tensor("value/.ATTRIBUTES/VARIABLE_VALUE"), 0.70)

  def test_early_stopping_needs_validation_metric(self):
    callback = training.EpochCheckpoint(tf.train.Checkpoint(), self._new_dir(), patience=2)
    with self.assertRaisesRegex(ValueError, "val_auc_mean"):
      callback.on_epoch_end(0, {"loss": 0.5})

  @parameterized.named_parameters(
      ("shared_adagrad", "shared"),
      ("adam_everything", "adam"))
  def test_embedding_optimizer_modes_train(self, mode):
    model_dir = self._new_dir()
    result = training.train(_config(self.paths["csv"], model_dir, epochs=1,
                                    embedding_optimizer=mode))
    self.assertTrue(np.isfinite(result["test_metrics"]["logloss/click"]))

  def test_invalid_config_raises(self):
    with self.assertRaisesRegex(ValueError, "embedding_optimizer"):
      training.train(_config(self.paths["csv"], self._new_dir(),
                             embedding_optimizer="sgd"))
    with self.assertRaisesRegex(ValueError, "Unknown dataset"):
      training.train(training.TrainConfig(model_dir=self._new_dir(),
                                          dataset="criteo"))

  def test_missing_column_fails_before_training(self):
    paths = dict(self.paths["csv"])
    broken = os.path.join(self._new_dir(), "train.csv")
    with open(paths["train"]) as source, open(broken, "w") as target:
      for line in source:
        target.write(",".join(line.rstrip("\n").split(",")[:-1]) + "\n")
    paths["train"] = broken
    model_dir = self._new_dir()
    with self.assertRaisesRegex(ValueError, "like"):
      training.train(_config(paths, model_dir))
    self.assertFalse(os.path.exists(os.path.join(model_dir, "checkpoints")))

  def test_new_schema_needs_only_config(self):
    if not os.path.isdir(_ALI_CCP_DIR):
      self.skipTest(f"Ali-CCP sample not found at {_ALI_CCP_DIR}; set "
                    "PEPNET_TF_ALI_CCP_SAMPLE to its folder.")
    model_dir = self._new_dir()
    result = training.train(training.TrainConfig(
        model_dir=model_dir,
        feature_config=os.path.join(_REPO_ROOT, "data", "configs", "ali_ccp.json"),
        train_files=[os.path.join(_ALI_CCP_DIR, "train.csv")],
        valid_files=[os.path.join(_ALI_CCP_DIR, "val.csv")],
        test_files=[os.path.join(_ALI_CCP_DIR, "test.csv")],
        batch_size=32, epochs=1, hidden_units=[8], export=False, verbose=0))
    metrics = result["test_metrics"]
    self.assertTrue(np.isfinite(metrics["logloss/click"]))
    self.assertTrue(np.isfinite(metrics["logloss/purchase"]))
    self.assertIn("auc/click/domain_2", metrics)

  def test_cli_train_then_evaluate(self):
    paths = self.paths["csv"]
    model_dir = self._new_dir()
    env = dict(os.environ, PYTHONPATH=_REPO_ROOT)
    train_command = [
        sys.executable, "-m", "trainers.train", f"--model_dir={model_dir}",
        f"--feature_config={paths['feature_config']}", f"--train={paths['train']}",
        f"--valid={paths['valid']}", f"--test={paths['test']}", "--epochs=1",
        "--batch_size=128", "--hidden_units=8", "--noexport", "--verbose=0"]
    completed = subprocess.run(train_command, capture_output=True, text=True, env=env,
                               cwd=_REPO_ROOT, timeout=300)
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    self.assertIn("auc d2", completed.stdout)

    evaluate_command = [sys.executable, "-m", "trainers.evaluate",
                        f"--model_dir={model_dir}", "--split=valid"]
    completed = subprocess.run(evaluate_command, capture_output=True, text=True, env=env,
                               cwd=_REPO_ROOT, timeout=300)
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    header, click_row = completed.stdout.strip().splitlines()[:2]
    self.assertIn("gauc", header)
    self.assertTrue(click_row.startswith("click"))


if __name__ == "__main__":
  tf.test.main()
