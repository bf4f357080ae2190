"""Evaluate a trained PEPNet on a split and print AUC, GAUC and log loss per task.

From a training run's checkpoint (the best epoch by default):
  python -m trainers.evaluate --model_dir=/tmp/pepnet --split=test

From an exported SavedModel, through its serving_default signature:
  python -m trainers.evaluate --model_dir=/tmp/pepnet --saved_model=/tmp/pepnet/export/1700000000
"""

import json

from absl import app
from absl import flags

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib
from pepnet_tf import training

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The model_dir of a training run.")
flags.DEFINE_string("checkpoint", "best",
                    "'best', 'latest' or a checkpoint path inside model_dir.")
flags.DEFINE_string("saved_model", None,
                    "Evaluate this SavedModel directory instead of a checkpoint.")
flags.DEFINE_enum("split", "test", ["train", "valid", "test"],
                  "Split of the training run's data to evaluate.")
flags.DEFINE_list("files", [], "Data files to evaluate instead of --split.")
flags.DEFINE_string("feature_config", None,
                    "Feature config of --files; defaults to the training run's.")
flags.DEFINE_integer("batch_size", 1024, "Batch size of evaluation.")
flags.DEFINE_string("output", None, "Also write the metrics to this JSON file.")
flags.mark_flag_as_required("model_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.saved_model:
    feature_config = features_lib.load(
        FLAGS.feature_config or f"{FLAGS.model_dir}/feature_config.json")
    with open(f"{FLAGS.model_dir}/config.json", encoding="utf-8") as handle:
      paths = training.DataPaths(**json.load(handle)["data"])
    scorer = training.savedmodel_scorer(FLAGS.saved_model)
  else:
    model, feature_config, paths = training.load_trained_model(
        FLAGS.model_dir, FLAGS.checkpoint)
    if FLAGS.feature_config:
      feature_config = features_lib.load(FLAGS.feature_config)
    scorer = training.model_scorer(model)

  files = FLAGS.files or getattr(paths, FLAGS.split)
  if not files:
    raise app.UsageError(f"The training run has no {FLAGS.split} files; pass --files.")
  dataset = input_lib.make_dataset(feature_config, files, FLAGS.batch_size, training=False)
  metrics = training.evaluate_dataset(scorer, feature_config, dataset)
  print(training.format_metrics_table(metrics, feature_config))
  if FLAGS.output:
    with open(FLAGS.output, "w", encoding="utf-8") as handle:
      json.dump(metrics, handle, indent=2, sort_keys=True)


if __name__ == "__main__":
  app.run(main)
