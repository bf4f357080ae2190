"""Training step time and memory of PEPNet against table rows and domains.

A synthetic dataset, described with `pepnet_tf.features.from_dict`: prior ids
`user_id` (10,000 hash buckets) and `item_id` (`--rows_grid` hash buckets), six
general fields of 100 hash buckets, one bucketized domain-side field, an int64
domain column with `num_domains` values and two tasks. Item ids follow a Zipf
distribution over the item table (exponent `--zipf`), user ids are uniform.

Two sweeps, both for per-domain and shared Adagrad on the tables:

- rows: item-table rows over `--rows_grid` at `--domains_fixed` domains;
- domains: number of domains over `--domains_grid` at `--rows_fixed` item rows.

Every point runs in its own child process (so that its peak RSS is its own),
builds the model with `training.build_model`, and trains with `model.fit` on
in-memory batches (`--steps` steps per epoch, `--epochs` epochs). The step time is
the median over the epochs after the first (which includes tracing). Memory: bytes
of the embedding tables and of the embedding optimizer's state (from the variable
shapes), and the child's peak RSS (`resource.getrusage`).

Writes one PNG per sweep and prints a table and, last, one JSON line.

  python bench/scale.py --rows_plot=docs/images/scale_rows.png \
      --domains_plot=docs/images/scale_domains.png
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

from absl import app
from absl import flags
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
import tensorflow as tf

from pepnet_tf import features as features_lib
from pepnet_tf import training
from timing import EpochTimer  # bench/timing.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_list("rows_grid", ["10000", "100000", "1000000", "4000000"],
                  "Item-table rows of the rows sweep.")
flags.DEFINE_list("domains_grid", ["1", "2", "4", "8", "16"],
                  "Numbers of domains of the domains sweep.")
flags.DEFINE_integer("domains_fixed", 3, "Domains during the rows sweep.")
flags.DEFINE_integer("rows_fixed", 1_000_000, "Item-table rows during the domains sweep.")
flags.DEFINE_list("optimizers", ["per_domain", "shared"], "Embedding optimizers compared.")
flags.DEFINE_integer("batch_size", 1024, "Batch size.")
flags.DEFINE_integer("steps", 20, "Training steps per epoch.")
flags.DEFINE_integer("epochs", 4, "Epochs per point; the first one is not timed.")
flags.DEFINE_float("zipf", 1.2, "Exponent of the Zipf distribution of the item ids.")
flags.DEFINE_string("rows_plot", "docs/images/scale_rows.png", "PNG of the rows sweep; "
                    "empty writes none.")
flags.DEFINE_string("domains_plot", "docs/images/scale_domains.png", "PNG of the domains "
                    "sweep; empty writes none.")
flags.DEFINE_string("point", None, "Internal: measure one point, given as JSON, and print "
                    "its result as one JSON line.")

USER_ROWS = 10_000
NUM_GENERAL = 6
GENERAL_ROWS = 100
EMBEDDING_DIM = 16


def synthetic_config(item_rows: int, num_domains: int) -> features_lib.FeatureConfig:
  """Build the feature config of the synthetic dataset."""
  features = [
      {"name": "user_id", "group": "prior", "hash_buckets": USER_ROWS},
      {"name": "item_id", "group": "prior", "hash_buckets": item_rows},
  ]
  features += [{"name": f"general_{index}", "group": "general", "hash_buckets": GENERAL_ROWS}
               for index in range(NUM_GENERAL)]
  features += [
      {"name": "item_rate", "group": "domain_side", "dtype": "float32",
       "boundaries": [0.2, 0.4, 0.6, 0.8]},
      {"name": "domain", "group": "domain"},
      {"name": "click", "group": "label"},
      {"name": "like", "group": "label"},
  ]
  return features_lib.from_dict({
      "name": "scale",
      "embedding_dim": EMBEDDING_DIM,
      "domain": {"feature": "domain", "values": list(range(num_domains))},
      "user_id_feature": "user_id",
      "features": features,
  })


def synthetic_batches(item_rows: int, num_domains: int, num_rows: int, batch_size: int,
                      zipf: float, seed: int = 0) -> tf.data.Dataset:
  """In-memory `(features, labels)` batches, repeated without end."""
  rng = np.random.default_rng(seed)
  # Zipf ranks start at 1 and have no upper bound; fold them onto the table.
  item = (rng.zipf(zipf, num_rows) - 1) % item_rows
  user = rng.integers(0, USER_ROWS * 10, num_rows)
  features = {"user_id": user, "item_id": item.astype(np.int64),
              "item_rate": rng.random(num_rows).astype(np.float32),
              "domain": rng.integers(0, num_domains, num_rows)}
  for index in range(NUM_GENERAL):
    features[f"general_{index}"] = rng.integers(0, GENERAL_ROWS * 2, num_rows)
  score = np.sin(user) + np.cos(item) + 0.1 * features["domain"]
  labels = {"click": (score + rng.normal(0, 1, num_rows) > 0).astype(np.float32),
            "like": (score + rng.normal(0, 1, num_rows) > 1).astype(np.float32)}
  dataset = tf.data.Dataset.from_tensor_slices((features, labels))
  return dataset.batch(batch_size, drop_remainder=True).cache().repeat()


def _mib(variables) -> float:
  return sum(var.shape.num_elements() * var.dtype.size for var in variables) / 2**20


def measure_point(item_rows: int, num_domains: int, optimizer: str) -> Dict[str, Any]:
  """Train one model in this process and return its step time and memory."""
  tf.keras.utils.set_random_seed(0)
  feature_config = synthetic_config(item_rows, num_domains)
  config = training.TrainConfig(model_dir="", embedding_optimizer=optimizer,
                                batch_size=FLAGS.batch_size)
  model = training.build_model(config, feature_config)
  dataset = synthetic_batches(item_rows, num_domains, FLAGS.steps * FLAGS.batch_size,
                              FLAGS.batch_size, FLAGS.zipf)
  timer = EpochTimer()
  model.fit(dataset, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps, callbacks=[timer],
            verbose=0)
  step_ms = [duration / FLAGS.steps * 1e3 for duration in timer.durations[1:]]
  optimizer_variables = []
  if model.embedding_optimizer is not None:
    # The accumulators live in the Keras Adagrads inside DomainAdagrad, one per
    # domain (or one when shared).
    optimizer_variables = [var for adagrad in model.embedding_optimizer.optimizers
                           for var in adagrad.variables]
  return {
      "item_rows": item_rows, "num_domains": num_domains, "optimizer": optimizer,
      "step_ms": statistics.median(step_ms), "step_ms_runs": step_ms,
      "examples_per_sec": FLAGS.batch_size / statistics.median(step_ms) * 1e3,
      "tables_mib": _mib(model.embedding_tables),
      "embedding_optimizer_mib": _mib(optimizer_variables),
      "dense_mib": _mib(model.dense_variables),
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def run_point(item_rows: int, num_domains: int, optimizer: str) -> Dict[str, Any]:
  """Measure one point in a child process running this script with --point."""
  point = json.dumps({"item_rows": item_rows, "num_domains": num_domains,
                      "optimizer": optimizer})
  command = [sys.executable, os.path.abspath(__file__), f"--point={point}",
             f"--batch_size={FLAGS.batch_size}", f"--steps={FLAGS.steps}",
             f"--epochs={FLAGS.epochs}", f"--zipf={FLAGS.zipf}"]
  completed = subprocess.run(command, check=True, capture_output=True, text=True)
  result = json.loads(completed.stdout.strip().splitlines()[-1])
  print(f"rows {item_rows:>9,}  domains {num_domains:>2}  {optimizer:10s} "
        f"{result['step_ms']:7.1f} ms/step  tables {result['tables_mib']:7.1f} MiB  "
        f"optimizer {result['embedding_optimizer_mib']:7.1f} MiB  "
        f"peak RSS {result['peak_rss_mib']:7.0f} MiB", flush=True)
  return result


def plot_sweep(points: List[Dict[str, Any]], x_key: str, x_label: str, log_x: bool,
               title: str, path: str) -> None:
  """Write step time (left) and memory (right) against `x_key`, one line per optimizer."""
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top

  figure = figure_lib.Figure(figsize=(10, 4), layout="constrained")
  time_axes, memory_axes = figure.subplots(1, 2)
  optimizers = list(dict.fromkeys(point["optimizer"] for point in points))
  for index, optimizer in enumerate(optimizers):
    color = f"C{index}"
    mine = sorted((point for point in points if point["optimizer"] == optimizer),
                  key=lambda point: point[x_key])
    xs = [point[x_key] for point in mine]
    time_axes.plot(xs, [point["step_ms"] for point in mine], marker="o", color=color,
                   label=optimizer)
    memory_axes.plot(xs, [point["tables_mib"] + point["embedding_optimizer_mib"]
                          for point in mine],
                     marker="o", color=color, label=f"{optimizer}: tables + Adagrad state")
    memory_axes.plot(xs, [point["peak_rss_mib"] for point in mine], marker="x",
                     color=color, linestyle="--", label=f"{optimizer}: peak RSS")
  grid_values = sorted({point[x_key] for point in points})
  for axes in (time_axes, memory_axes):
    axes.set_xlabel(x_label)
    if log_x:
      axes.set_xscale("log")
    # Ticks at the measured values, written out in full (no powers of ten).
    axes.set_xticks(grid_values, labels=[f"{value:,}" for value in grid_values])
    axes.minorticks_off()
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
  time_axes.set_ylabel("training step (ms, batch 1024)")
  time_axes.set_ylim(bottom=0)
  memory_axes.set_ylabel("MiB")
  figure.suptitle(title)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  figure.savefig(path, dpi=100)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.point:
    point = json.loads(FLAGS.point)
    print(json.dumps(measure_point(point["item_rows"], point["num_domains"],
                                   point["optimizer"])))
    return

  start = time.perf_counter()
  rows_points = [run_point(int(rows), FLAGS.domains_fixed, optimizer)
                 for rows in FLAGS.rows_grid for optimizer in FLAGS.optimizers]
  domain_points = [run_point(FLAGS.rows_fixed, int(domains), optimizer)
                   for domains in FLAGS.domains_grid for optimizer in FLAGS.optimizers]
  if FLAGS.rows_plot:
    plot_sweep(rows_points, "item_rows", "item-table rows", True,
               f"Scaling with item-table rows ({FLAGS.domains_fixed} domains)",
               FLAGS.rows_plot)
  if FLAGS.domains_plot:
    plot_sweep(domain_points, "num_domains", "domains", True,
               f"Scaling with domains ({FLAGS.rows_fixed:,} item rows)", FLAGS.domains_plot)
  print(json.dumps({
      "rows_sweep": rows_points, "domains_sweep": domain_points,
      "batch_size": FLAGS.batch_size, "steps": FLAGS.steps, "epochs": FLAGS.epochs,
      "zipf": FLAGS.zipf, "seconds": time.perf_counter() - start, "cores": os.cpu_count(),
      "load_average": os.getloadavg(), "tensorflow": tf.__version__,
      "machine": platform.machine(), "date": time.strftime("%Y-%m-%d %H:%M")}))


if __name__ == "__main__":
  app.run(main)
