"""The ablation and gate inspection CLIs on the tiny synthetic dataset."""

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

import synthetic

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _run(args, timeout=300):
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT)
  return subprocess.run([sys.executable, "-m"] + args, capture_output=True, text=True,
                        env=env, cwd=_REPO_ROOT, timeout=timeout)


def _is_png(path):
  with open(path, "rb") as handle:
    return handle.read(8) == _PNG_SIGNATURE


class AblateCliTest(tf.test.TestCase):
  """One ablation of two variants, one seed and one epoch, shared by the tests."""

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="pepnet_ablate_")
    paths = synthetic.write_dataset(os.path.join(cls.root, "data"), "csv")
    cls.output_dir = os.path.join(cls.root, "ablation")
    cls.chart = os.path.join(cls.root, "chart", "auc.png")
    cls.command = [
        "trainers.ablate", f"--output_dir={cls.output_dir}",
        f"--feature_config={paths['feature_config']}", f"--train={paths['train']}",
        f"--valid={paths['valid']}", f"--test={paths['test']}", "--seeds=1",
        "--variants=no_gates,pepnet", "--epochs=1", "--batch_size=128",
        f"--chart={cls.chart}"]
    cls.first_run = _run(cls.command)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def _metrics_path(self, variant):
    return os.path.join(self.output_dir, variant, "seed_1", "ablation_metrics.json")

  def test_run_writes_metrics_per_run(self):
    self.assertEqual(self.first_run.returncode, 0, self.first_run.stderr[-3000:])
    for variant in ("no_gates", "pepnet"):
      with open(self._metrics_path(variant), encoding="utf-8") as handle:
        record = json.load(handle)
      self.assertEqual(record["variant"], variant)
      self.assertEqual(record["seed"], 1)
      for key in ("auc/click", "gauc/like", "auc/like/domain_2", "gauc/click/domain_0"):
        self.assertIn(key, record["metrics"])
        self.assertBetween(record["metrics"][key], 0.0, 1.0)

  def test_run_writes_summary_table_and_chart(self):
    self.assertEqual(self.first_run.returncode, 0, self.first_run.stderr[-3000:])
    with open(os.path.join(self.output_dir, "ablation.json"), encoding="utf-8") as handle:
      summary = json.load(handle)
    self.assertEqual(sorted(summary["summary"]), ["no_gates", "pepnet"])
    self.assertEqual(summary["variants"]["no_gates"],
                     {"use_epnet": False, "use_ppnet": False})
    click = summary["summary"]["pepnet"]["auc/click"]
    self.assertEqual(click["n"], 1)
    self.assertEqual(click["std"], 0.0)
    self.assertLen(summary["runs"], 2)

    with open(os.path.join(self.output_dir, "ablation.md"), encoding="utf-8") as handle:
      table = handle.read()
    self.assertIn("| variant | AUC click | GAUC click | AUC like | GAUC like |", table)
    self.assertIn("| no_gates | ", table)
    self.assertIn("| pepnet | ", table)
    self.assertIn("GAUC per domain", table)
    self.assertIn("| no_gates | ", self.first_run.stdout)
    self.assertTrue(_is_png(self.chart))

  def test_rerun_skips_finished_runs(self):
    self.assertEqual(self.first_run.returncode, 0, self.first_run.stderr[-3000:])
    before = {variant: os.stat(self._metrics_path(variant)).st_mtime_ns
              for variant in ("no_gates", "pepnet")}
    os.remove(os.path.join(self.output_dir, "ablation.md"))

    rerun = _run(self.command)

    self.assertEqual(rerun.returncode, 0, rerun.stderr[-3000:])
    self.assertIn("Skipping no_gates seed 1", rerun.stderr)
    self.assertIn("Skipping pepnet seed 1", rerun.stderr)
    self.assertNotIn("Training no_gates", rerun.stderr)
    for variant, mtime in before.items():
      self.assertEqual(os.stat(self._metrics_path(variant)).st_mtime_ns, mtime)
    self.assertTrue(os.path.exists(os.path.join(self.output_dir, "ablation.md")))

  def test_unknown_variant_rejected(self):
    completed = _run(["trainers.ablate", f"--output_dir={self.root}/unused",
                      "--variants=pepnet,no_such_variant"])
    self.assertNotEqual(completed.returncode, 0)
    self.assertIn("no_such_variant", completed.stderr)
    self.assertFalse(os.path.exists(os.path.join(self.root, "unused")))

  def test_inspect_gates_writes_plots_and_json(self):
    self.assertEqual(self.first_run.returncode, 0, self.first_run.stderr[-3000:])
    output_dir = os.path.join(self.root, "gates_pepnet")
    completed = _run(["trainers.inspect_gates",
                      f"--model_dir={self.output_dir}/pepnet/seed_1",
                      f"--output_dir={output_dir}"])
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    self.assertTrue(_is_png(os.path.join(output_dir, "epnet_gate_heatmap.png")))
    self.assertTrue(_is_png(os.path.join(output_dir, "ppnet_gate_histograms.png")))
    with open(os.path.join(output_dir, "gate_values.json"), encoding="utf-8") as handle:
      report = json.load(handle)
    self.assertEqual(report["domain_names"], synthetic.DOMAINS)
    self.assertEqual(report["field_names"], ["age", "city"])
    self.assertEqual(sum(report["samples_per_domain"]), 200)
    means = report["epnet_mean_by_domain"]
    self.assertLen(means, 3)
    for row in means:
      self.assertLen(row, 2)
      for value in row:
        self.assertBetween(value, 0.0, report["gamma"])
    # Two tasks times two tower layers.
    self.assertLen(report["ppnet_summary"], 4)
    self.assertLen(report["ppnet_mean_by_domain"], 4)
    for row in report["ppnet_summary"]:
      self.assertBetween(row["min"], 0.0, report["gamma"])
      self.assertBetween(row["max"], 0.0, report["gamma"])
      self.assertLessEqual(row["q05"], row["q50"])
      self.assertLessEqual(row["q50"], row["q95"])

  def test_inspect_gates_without_gates_writes_nulls(self):
    self.assertEqual(self.first_run.returncode, 0, self.first_run.stderr[-3000:])
    output_dir = os.path.join(self.root, "gates_no_gates")
    completed = _run(["trainers.inspect_gates",
                      f"--model_dir={self.output_dir}/no_gates/seed_1",
                      f"--output_dir={output_dir}", "--split=valid"])
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    with open(os.path.join(output_dir, "gate_values.json"), encoding="utf-8") as handle:
      report = json.load(handle)
    self.assertIsNone(report["epnet_mean_by_domain"])
    self.assertIsNone(report["ppnet_summary"])
    self.assertEqual(report["split"], "valid")
    self.assertFalse(os.path.exists(os.path.join(output_dir, "epnet_gate_heatmap.png")))
    self.assertFalse(os.path.exists(os.path.join(output_dir, "ppnet_gate_histograms.png")))
