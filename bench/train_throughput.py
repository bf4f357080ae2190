"""Steady-state training throughput of PEPNet on MovieLens-100K through model.fit.

Measures examples/second of `model.fit` after the first epoch (which includes
tracing), end to end from the TFRecord files and compute-only on cached batches,
for each embedding optimizer. Prints a table and, last, one JSON line.

  python bench/train_throughput.py --epochs=4 --repeats=3
"""

import json
import os
import platform
import statistics
import time

from absl import app
from absl import flags

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib
from pepnet_tf import training
from timing import EpochTimer  # bench/timing.py, beside this script

FLAGS = flags.FLAGS
flags.DEFINE_integer("epochs", 4, "Epochs per measurement; the first one is not timed.")
flags.DEFINE_integer("repeats", 3, "Measurements per variant; the median is reported.")
flags.DEFINE_integer("batch_size", 1024, "Batch size.")
flags.DEFINE_list("optimizers", ["per_domain", "shared", "adam"],
                  "Embedding optimizers to compare.")
flags.DEFINE_string("data_dir", None, "Prepared MovieLens-100K; default cache if unset.")
flags.DEFINE_integer("steps_per_execution", None,
                     "Training steps per call of the compiled training function; unset "
                     "keeps the TrainConfig default.")
flags.DEFINE_integer("gate_hidden_units", None,
                     "Hidden width of every Gate NU; unset keeps the TrainConfig default.")


def _measure(optimizer: str, dataset, steps: int, num_examples: int, paths) -> float:
  """Examples/second of the epochs after the first, for one fresh model."""
  options = {name: FLAGS[name].value for name in ("steps_per_execution", "gate_hidden_units")
             if FLAGS[name].value is not None}
  config = training.TrainConfig(model_dir="", embedding_optimizer=optimizer,
                                batch_size=FLAGS.batch_size, **options)
  feature_config = features_lib.load(paths.feature_config)
  model = training.build_model(config, feature_config)
  timer = EpochTimer()
  model.fit(dataset, epochs=FLAGS.epochs, steps_per_epoch=steps, callbacks=[timer],
            verbose=0)
  return num_examples * (FLAGS.epochs - 1) / sum(timer.durations[1:])


def main(argv):
  del argv
  load_at_start = os.getloadavg()[0]
  paths = training.resolve_data(training.TrainConfig(model_dir="", data_dir=FLAGS.data_dir))
  feature_config = features_lib.load(paths.feature_config)
  num_examples = input_lib.count_records(feature_config, paths.train)
  steps = input_lib.steps_per_epoch(num_examples, FLAGS.batch_size)

  streamed = input_lib.make_dataset(feature_config, paths.train, FLAGS.batch_size,
                                    training=True, epochs=FLAGS.epochs)
  # Compute only: the parsed batches of one epoch, cached in memory and repeated.
  one_epoch = input_lib.make_dataset(feature_config, paths.train, FLAGS.batch_size,
                                     training=False).cache()
  for _ in one_epoch:
    pass
  cached = one_epoch.repeat()

  results = {}
  for optimizer in FLAGS.optimizers:
    end_to_end = [_measure(optimizer, streamed, steps, num_examples, paths)
                  for _ in range(FLAGS.repeats)]
    compute_only = [_measure(optimizer, cached, steps, num_examples, paths)
                    for _ in range(FLAGS.repeats)]
    results[optimizer] = {
        "examples_per_sec": statistics.median(end_to_end),
        "compute_only_examples_per_sec": statistics.median(compute_only),
        "runs_end_to_end": end_to_end,
        "runs_compute_only": compute_only,
    }
    print(f"{optimizer:11s} end to end {results[optimizer]['examples_per_sec']:9.0f} ex/s"
          f"   compute only {results[optimizer]['compute_only_examples_per_sec']:9.0f} ex/s",
          flush=True)

  summary = dict(results.get("per_domain") or next(iter(results.values())))
  if "per_domain" in results and "shared" in results:
    summary["per_domain_overhead_vs_shared"] = (
        results["shared"]["compute_only_examples_per_sec"]
        / results["per_domain"]["compute_only_examples_per_sec"] - 1)
  config = training.TrainConfig(model_dir="")
  summary.update(variants=results, batch_size=FLAGS.batch_size,
                 steps_per_execution=FLAGS.steps_per_execution or config.steps_per_execution,
                 gate_hidden_units=FLAGS.gate_hidden_units or config.gate_hidden_units,
                 load_average_1min=[load_at_start, os.getloadavg()[0]], cores=os.cpu_count(),
                 tensorflow=tf.__version__, machine=platform.machine(),
                 date=time.strftime("%Y-%m-%d"))
  print(json.dumps(summary))


if __name__ == "__main__":
  app.run(main)
