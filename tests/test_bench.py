"""Smoke runs of the benchmark scripts with tiny sizes. No timing is checked."""

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


def _run_script(script, args, timeout=300):
  env = dict(os.environ, PYTHONPATH=_REPO_ROOT)
  return subprocess.run([sys.executable, os.path.join(_REPO_ROOT, "bench", script)] + args,
                        capture_output=True, text=True, env=env, cwd=_REPO_ROOT,
                        timeout=timeout)


def _last_json_line(stdout):
  return json.loads(stdout.strip().splitlines()[-1])


def _is_png(path):
  with open(path, "rb") as handle:
    return handle.read(8) == _PNG_SIGNATURE


class BenchSmokeTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.root = tempfile.mkdtemp(prefix="pepnet_bench_")
    cls.paths = synthetic.write_dataset(os.path.join(cls.root, "data"), "csv")

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.root, ignore_errors=True)
    super().tearDownClass()

  def test_serving_trains_exports_and_reports(self):
    model_dir = os.path.join(self.root, "serving_model")
    paths = self.paths
    completed = _run_script("serving.py", [
        f"--model_dir={model_dir}", f"--feature_config={paths['feature_config']}",
        f"--train={paths['train']}", f"--valid={paths['valid']}", f"--test={paths['test']}",
        "--epochs=1", "--repeats=2", "--latency_calls=5", "--throughput_calls=2",
        "--warmup_calls=1"])
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    result = _last_json_line(completed.stdout)
    for key in ("p50_ms_batch1", "p99_ms_batch1", "p50_ms_batch64", "p99_ms_batch64",
                "examples_per_sec_batch1024", "peak_rss_mib"):
      self.assertGreater(result[key], 0, key)
    self.assertLessEqual(result["p50_ms_batch1"], result["p99_ms_batch1"])
    self.assertLen(result["runs"]["batch1"], 2)
    self.assertLen(result["runs"]["throughput_batch1024"], 2)
    self.assertTrue(result["saved_model"].startswith(os.path.join(model_dir, "export")))
    self.assertTrue(os.path.exists(os.path.join(result["saved_model"], "saved_model.pb")))

  def test_scale_measures_both_sweeps_and_plots(self):
    rows_plot = os.path.join(self.root, "rows.png")
    domains_plot = os.path.join(self.root, "domains.png")
    completed = _run_script("scale.py", [
        "--rows_grid=500", "--domains_grid=2", "--rows_fixed=300", "--domains_fixed=1",
        "--optimizers=per_domain", "--batch_size=32", "--steps=2", "--epochs=2",
        f"--rows_plot={rows_plot}", f"--domains_plot={domains_plot}"])
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])
    result = _last_json_line(completed.stdout)
    rows_point, = result["rows_sweep"]
    domains_point, = result["domains_sweep"]
    self.assertEqual((rows_point["item_rows"], rows_point["num_domains"]), (500, 1))
    self.assertEqual((domains_point["item_rows"], domains_point["num_domains"]), (300, 2))
    # Per-domain Adagrad keeps one accumulator per domain and table: with 2 domains,
    # twice the table bytes (plus one iteration counter per domain).
    self.assertAlmostEqual(domains_point["embedding_optimizer_mib"],
                           2 * domains_point["tables_mib"], delta=0.001)
    for point in (rows_point, domains_point):
      self.assertGreater(point["step_ms"], 0)
      self.assertGreater(point["peak_rss_mib"], 0)
    self.assertTrue(_is_png(rows_plot))
    self.assertTrue(_is_png(domains_plot))
