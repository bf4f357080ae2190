"""The pass runner: a layout of passes trained in order, each warm-started."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

import synthetic
from pepnet_tf import passes
from pepnet_tf import training

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_layout(directory, num_passes=2):
  """Write a pass layout of synthetic TFRecords whose user ids are admitted by count."""
  entries = []
  for number in range(1, num_passes + 1):
    name = f"pass_{number:03d}"
    synthetic.write_dataset(os.path.join(directory, name), "tfrecord",
                            sizes=(300, 100, 100), seed=10 * number)
    entries.append({"name": name, "start": f"day {number}", "end": f"day {number + 1}",
                    "train_rows": 300, "valid_rows": 100, "test_rows": 100})
  config = synthetic.feature_config("tfrecord")
  config["features"][0] = {"name": "user_id", "group": "prior", "min_frequency": 8,
                           "num_oov_buckets": 2}
  with open(os.path.join(directory, "feature_config.json"), "w", encoding="utf-8") as handle:
    json.dump(config, handle)
  with open(os.path.join(directory, passes.MANIFEST), "w", encoding="utf-8") as handle:
    json.dump({"dataset": "synthetic", "passes": entries}, handle)


def _template(**overrides):
  values = dict(model_dir="", batch_size=64, epochs=1, hidden_units=[8],
                shuffle_buffer=256, admission_window=2, export=False, verbose=0)
  values.update(overrides)
  return training.TrainConfig(**values)


class PassesTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.layout = tempfile.mkdtemp(prefix="pepnet_layout_")
    _write_layout(cls.layout)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.layout, ignore_errors=True)
    super().tearDownClass()

  def test_passes_chain_warm_starts_and_report(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    summaries = passes.run_passes(_template(), self.layout, root)
    self.assertEqual([summary["name"] for summary in summaries], ["pass_001", "pass_002"])
    self.assertIsNone(summaries[0]["warm_start_from"])
    self.assertEqual(summaries[1]["warm_start_from"], os.path.join(root, "pass_001"))
    state = json.load(open(os.path.join(root, "pass_002", "admission", "state.json")))
    self.assertEqual(state["window_passes"], [1, 2])
    for summary in summaries:
      self.assertIn("auc/click", summary["test_metrics"])
      user = summary["tables"]["user_id"]
      self.assertEqual(user["table_size"], user["vocabulary_size"] + 2)
    second = summaries[1]["tables"]["user_id"]
    first = summaries[0]["tables"]["user_id"]
    self.assertEqual(second["carried"] + second["evicted"], first["vocabulary_size"])

    with open(os.path.join(root, passes.REPORT_MARKDOWN), encoding="utf-8") as handle:
      markdown = handle.read()
    self.assertIn("| pass_002 | day 2 .. day 3 | 300 | 100 |", markdown)
    self.assertIn(f"{second['table_size']}: {second['carried']} kept +{second['admitted']} "
                  f"-{second['evicted']}", markdown)
    report = json.load(open(os.path.join(root, passes.REPORT_JSON)))
    self.assertEqual(report, summaries)

    # A rerun finds both passes done and trains nothing.
    summary_path = os.path.join(root, "pass_002", passes.SUMMARY_FILE)
    modified = os.path.getmtime(summary_path)
    self.assertEqual(passes.run_passes(_template(), self.layout, root), summaries)
    self.assertEqual(os.path.getmtime(summary_path), modified)

  def test_changed_settings_raise(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    passes.run_passes(_template(), self.layout, root, last=1)
    with self.assertRaisesRegex(ValueError, "admission_window 2 -> 3"):
      passes.run_passes(_template(admission_window=3), self.layout, root)
    with self.assertRaisesRegex(ValueError, "warm_start True -> False"):
      passes.run_passes(_template(), self.layout, root, warm_start=False)

  def test_no_warm_start_trains_each_pass_alone(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    summaries = passes.run_passes(_template(), self.layout, root, warm_start=False, first=2)
    self.assertLen(summaries, 1)
    self.assertIsNone(summaries[0]["warm_start_from"])
    self.assertEqual(summaries[0]["tables"]["user_id"]["carried"], 0)

  def test_later_pass_needs_the_previous_one(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    with self.assertRaisesRegex(FileNotFoundError,
                                r"has not finished\. Start from pass 1 \(pass_001\)"):
      passes.run_passes(_template(), self.layout, root, first=2)

  def test_invalid_pass_range_raises(self):
    with self.assertRaisesRegex(ValueError, r"Passes 2\.\.5 are outside 1\.\.2"):
      passes.run_passes(_template(), self.layout, self.get_temp_dir(), first=2, last=5)

  def test_missing_manifest_raises(self):
    with self.assertRaisesRegex(FileNotFoundError, "is not a pass layout"):
      passes.read_manifest(self.get_temp_dir())

  def test_cli_rejects_layout_flags(self):
    command = [sys.executable, "-m", "trainers.passes", f"--passes_dir={self.layout}",
               f"--model_dir={self.get_temp_dir()}", "--train=/tmp/x.tfrecord"]
    completed = subprocess.run(command, cwd=_REPO_ROOT, capture_output=True, text=True,
                               timeout=300, check=False)
    self.assertNotEqual(completed.returncode, 0)
    self.assertIn("Remove --train: each pass takes its data", completed.stderr)


if __name__ == "__main__":
  tf.test.main()
