"""Test-split quality of the default PEPNet on MovieLens-100K over several seeds.

Trains `trainers.train`'s defaults once per seed and reports the mean and standard
deviation of every test metric, then one JSON line.

  python bench/quality.py --seeds=2023,1,2 --output_dir=/tmp/pepnet_quality

`--output_dir` must not hold runs of the same seeds, which training would resume.
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

from pepnet_tf import training

FLAGS = flags.FLAGS
flags.DEFINE_list("seeds", ["2023", "1", "2"], "Seeds, one training run each.")
flags.DEFINE_string("output_dir", "/tmp/pepnet_quality", "Parent of the runs' model_dirs.")
flags.DEFINE_string("data_dir", None, "Prepared MovieLens-100K; default cache if unset.")
flags.DEFINE_integer("gate_hidden_units", None,
                     "Hidden width of every Gate NU; unset keeps the TrainConfig default.")
flags.DEFINE_integer("steps_per_execution", None,
                     "Training steps per call of the compiled training function; unset "
                     "keeps the TrainConfig default.")


def main(argv):
  del argv
  seeds = [int(value) for value in FLAGS.seeds]
  for seed in seeds:
    # training.train resumes from a model_dir that contains checkpoints, so an
    # earlier run would be reported again instead of a fresh one.
    model_dir = os.path.join(FLAGS.output_dir, f"seed_{seed}")
    if tf.io.gfile.exists(model_dir) and tf.io.gfile.listdir(model_dir):
      raise ValueError(f"{model_dir} already contains a run, which training would resume "
                       "instead of starting over. Delete it or pass another --output_dir.")
  runs = []
  for seed in seeds:
    model_dir = os.path.join(FLAGS.output_dir, f"seed_{seed}")
    start = time.perf_counter()
    options = {name: FLAGS[name].value for name in ("gate_hidden_units", "steps_per_execution")
               if FLAGS[name].value is not None}
    result = training.train(training.TrainConfig(
        model_dir=model_dir, data_dir=FLAGS.data_dir, seed=seed, export=False, verbose=0,
        **options))
    runs.append({"seed": seed, "seconds": time.perf_counter() - start,
                 "best_epoch": result["best_epoch"], "metrics": result["test_metrics"]})
    print(f"seed {seed}: like {result['test_metrics']['auc/like']:.4f} "
          f"love {result['test_metrics']['auc/love']:.4f} "
          f"({runs[-1]['seconds']:.0f} s, best epoch {result['best_epoch']})", flush=True)

  summary = {}
  for key in runs[0]["metrics"]:
    values = [run["metrics"][key] for run in runs]
    summary[key] = {"mean": statistics.mean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0}
  print(json.dumps({"summary": summary, "runs": runs, "gate_hidden_units": FLAGS.gate_hidden_units,
                    "steps_per_execution": FLAGS.steps_per_execution,
                    "cores": os.cpu_count(),
                    "tensorflow": tf.__version__, "machine": platform.machine(),
                    "date": time.strftime("%Y-%m-%d")}))


if __name__ == "__main__":
  app.run(main)
