"""In-process serving speed of an exported PEPNet SavedModel.

Loads the SavedModel with `tf.saved_model.load` and calls its `serving_default`
signature directly (no TF Serving, no network), on rows of real data:

- latency at batch 1 and batch 64: the p50 and p99 of single calls;
- throughput at batch 1024: examples per second over back-to-back calls;
- peak resident memory of this process (`resource.getrusage`), which only loads
  and serves: training runs in a child process.

Each measurement is repeated `--repeats` times and the median over repeats is
reported. Prints a table and, last, one JSON line.

Without `--saved_model`, the script trains a small model on MovieLens-100K with
`python -m trainers.train` (which calls `training.train`) in `--model_dir` and
benchmarks its newest export; a `--model_dir` that already has an export is reused.

  python bench/serving.py --repeats=3
  python bench/serving.py --saved_model=/tmp/pepnet/export/1700000000
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
import tensorflow as tf

from pepnet_tf import export as export_lib
from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib
from pepnet_tf import training

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory to benchmark; trains one "
                    "in --model_dir when unset.")
flags.DEFINE_string("model_dir", "/tmp/pepnet_serving_bench",
                    "model_dir of the training run when --saved_model is unset.")
flags.DEFINE_integer("epochs", 2, "Training epochs when a model is trained.")
flags.DEFINE_string("data_dir", None, "Prepared MovieLens-100K; the default cache if unset.")
flags.DEFINE_string("feature_config", None, "Feature config of another dataset; then "
                    "--train, --valid and --test name its files.")
flags.DEFINE_list("train", [], "Training files (with --feature_config).")
flags.DEFINE_list("valid", [], "Validation files (with --feature_config).")
flags.DEFINE_list("test", [], "Files whose rows are sent to the model (with "
                  "--feature_config); the MovieLens-100K test split otherwise.")
flags.DEFINE_integer("repeats", 3, "Measurements per batch size; the median is reported.")
flags.DEFINE_integer("latency_calls", 1000, "Timed calls per latency measurement.")
flags.DEFINE_integer("throughput_calls", 50, "Timed batch-1024 calls per throughput "
                     "measurement.")
flags.DEFINE_integer("warmup_calls", 20, "Untimed calls before each measurement.")

LATENCY_BATCH_SIZES = (1, 64)
THROUGHPUT_BATCH_SIZE = 1024


def _rss_mib() -> float:
  """Current resident set size of this process in MiB (Linux /proc)."""
  with open("/proc/self/statm", encoding="ascii") as handle:
    resident_pages = int(handle.read().split()[1])
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_and_export(model_dir: str) -> str:
  """Train a small model with trainers.train in a child process; return its newest export."""
  export_base = os.path.join(model_dir, "export")
  existing = export_lib.latest_export(export_base) if os.path.isdir(export_base) else None
  if existing:
    logging.info("Reusing the export %s", existing)
    return existing
  command = [sys.executable, "-m", "trainers.train", f"--model_dir={model_dir}",
             f"--epochs={FLAGS.epochs}", "--verbose=0"]
  if FLAGS.data_dir:
    command.append(f"--data_dir={FLAGS.data_dir}")
  if FLAGS.feature_config:
    command += [f"--feature_config={FLAGS.feature_config}", f"--train={','.join(FLAGS.train)}",
                f"--valid={','.join(FLAGS.valid)}", f"--test={','.join(FLAGS.test)}"]
  logging.info("Training: %s", " ".join(command))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  completed = subprocess.run(command, cwd=root, capture_output=True, text=True)
  if completed.returncode != 0:
    raise RuntimeError(f"Training failed with exit status {completed.returncode}: "
                       f"{' '.join(command)}\n{completed.stderr[-5000:]}")
  path = export_lib.latest_export(export_base)
  if path is None:
    raise FileNotFoundError(f"Training finished but {export_base} contains no export.")
  return path


def load_rows(feature_config: features_lib.FeatureConfig, files: Sequence[str],
              input_names: Sequence[str]) -> Dict[str, np.ndarray]:
  """Every row of `files` as columns of raw values, for the signature's inputs only."""
  columns: Dict[str, List[np.ndarray]] = {name: [] for name in input_names}
  for features, _ in input_lib.make_dataset(feature_config, files, 4096, training=False):
    for name in input_names:
      columns[name].append(features[name].numpy())
  return {name: np.concatenate(parts) for name, parts in columns.items()}


def make_batches(columns: Dict[str, np.ndarray], batch_size: int, count: int,
                 dtypes: Dict[str, tf.DType]) -> List[Dict[str, tf.Tensor]]:
  """`count` consecutive batches of `batch_size` rows as tensors, wrapping around the data."""
  num_rows = len(next(iter(columns.values())))
  batches = []
  for index in range(count):
    rows = (np.arange(batch_size) + index * batch_size) % num_rows
    batches.append({name: tf.constant(values[rows], dtype=dtypes[name])
                    for name, values in columns.items()})
  return batches


def measure_latency(signature, batches: Sequence[Dict[str, tf.Tensor]], calls: int,
                    warmup_calls: int) -> Dict[str, float]:
  """p50 and p99 in milliseconds of `calls` single calls, cycling through `batches`."""
  for index in range(warmup_calls):
    signature(**batches[index % len(batches)])
  durations = np.empty(calls)
  for index in range(calls):
    batch = batches[index % len(batches)]
    start = time.perf_counter()
    outputs = signature(**batch)
    # Reading one output waits for the call to finish.
    next(iter(outputs.values())).numpy()
    durations[index] = time.perf_counter() - start
  return {"p50_ms": float(np.percentile(durations, 50) * 1e3),
          "p99_ms": float(np.percentile(durations, 99) * 1e3)}


def measure_throughput(signature, batches: Sequence[Dict[str, tf.Tensor]], calls: int,
                       warmup_calls: int) -> float:
  """Examples per second of `calls` back-to-back calls."""
  for index in range(warmup_calls):
    signature(**batches[index % len(batches)])
  batch_size = int(next(iter(batches[0].values())).shape[0])
  start = time.perf_counter()
  for index in range(calls):
    outputs = signature(**batches[index % len(batches)])
    next(iter(outputs.values())).numpy()
  return calls * batch_size / (time.perf_counter() - start)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  rss_start = _rss_mib()
  saved_model = FLAGS.saved_model or train_and_export(FLAGS.model_dir)
  if FLAGS.feature_config:
    feature_config = features_lib.load(FLAGS.feature_config)
    files = FLAGS.test
    if not files:
      raise app.UsageError("--feature_config needs --test: the rows sent to the model.")
  else:
    paths = training.resolve_data(training.TrainConfig(model_dir="", data_dir=FLAGS.data_dir))
    feature_config = features_lib.load(paths.feature_config)
    files = paths.test

  start = time.perf_counter()
  signature = tf.saved_model.load(saved_model).signatures["serving_default"]
  load_seconds = time.perf_counter() - start
  input_specs = signature.structured_input_signature[1]
  dtypes = {name: spec.dtype for name, spec in input_specs.items()}
  columns = load_rows(feature_config, files, sorted(input_specs))
  rss_loaded = _rss_mib()

  runs: Dict[str, List] = {f"batch{size}": [] for size in LATENCY_BATCH_SIZES}
  runs["throughput_batch1024"] = []
  batches = {size: make_batches(columns, size, 256, dtypes) for size in LATENCY_BATCH_SIZES}
  big_batches = make_batches(columns, THROUGHPUT_BATCH_SIZE, 8, dtypes)
  for _ in range(FLAGS.repeats):
    for size in LATENCY_BATCH_SIZES:
      runs[f"batch{size}"].append(measure_latency(
          signature, batches[size], FLAGS.latency_calls, FLAGS.warmup_calls))
    runs["throughput_batch1024"].append(measure_throughput(
        signature, big_batches, FLAGS.throughput_calls, FLAGS.warmup_calls))

  result = {}
  for size in LATENCY_BATCH_SIZES:
    for key in ("p50_ms", "p99_ms"):
      result[f"{key[:3]}_ms_batch{size}"] = statistics.median(
          run[key] for run in runs[f"batch{size}"])
  result["examples_per_sec_batch1024"] = statistics.median(runs["throughput_batch1024"])
  result.update(
      peak_rss_mib=_peak_rss_mib(), rss_at_start_mib=rss_start,
      rss_after_load_mib=rss_loaded, load_seconds=load_seconds, runs=runs,
      saved_model=saved_model, repeats=FLAGS.repeats, latency_calls=FLAGS.latency_calls,
      throughput_calls=FLAGS.throughput_calls, cores=os.cpu_count(),
      load_average=os.getloadavg(), tensorflow=tf.__version__,
      machine=platform.machine(), date=time.strftime("%Y-%m-%d %H:%M"))

  for size in LATENCY_BATCH_SIZES:
    print(f"batch {size:4d}: p50 {result[f'p50_ms_batch{size}']:.3f} ms   "
          f"p99 {result[f'p99_ms_batch{size}']:.3f} ms")
  print(f"batch 1024: {result['examples_per_sec_batch1024']:.0f} examples/s")
  print(f"peak RSS {result['peak_rss_mib']:.0f} MiB (after TensorFlow import "
        f"{rss_start:.0f} MiB, after load {rss_loaded:.0f} MiB)")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
