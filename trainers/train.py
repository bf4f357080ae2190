"""Train PEPNet, evaluate it on the test split and export a SavedModel.

Built-in data:
  python -m trainers.train --dataset=movielens_100k --model_dir=/tmp/pepnet

Any other dataset:
  python -m trainers.train --feature_config=cfg.json --train=train.csv \
      --valid=valid.csv --test=test.csv --model_dir=/tmp/pepnet

Rerunning with the same --model_dir resumes from the last checkpoint.

Distributed (docs/DISTRIBUTED.md): set TF_CONFIG in every task and run the same
command with --strategy=multi_worker_mirrored (every task trains) or
--strategy=parameter_server (the chief trains; worker and ps tasks serve), e.g.
  TF_CONFIG='{"cluster": {...}, "task": {"type": "ps", "index": 0}}' \
  python -m trainers.train --strategy=parameter_server --ps_shards=2 ...
"""

from absl import app
from absl import flags
from absl import logging

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import distribute
from pepnet_tf import training

_DEFAULTS = training.TrainConfig(model_dir="")

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Directory of checkpoints, logs, metrics and exports.")
flags.DEFINE_enum("dataset", _DEFAULTS.dataset, list(training.DATASETS),
                  "Built-in dataset, used when --feature_config is not set.")
flags.DEFINE_string("data_dir", None,
                    "Where the built-in dataset is prepared; defaults to "
                    "$PEPNET_TF_DATA_DIR or ~/.cache/pepnet_tf.")
flags.DEFINE_string("feature_config", None, "Feature config JSON of another dataset.")
flags.DEFINE_list("train", [], "Training files or glob patterns (with --feature_config).")
flags.DEFINE_list("valid", [], "Validation files or glob patterns (with --feature_config).")
flags.DEFINE_list("test", [], "Test files or glob patterns (with --feature_config).")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Global batch size.")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Maximum number of epochs.")
flags.DEFINE_integer("patience", _DEFAULTS.patience,
                     "Epochs without a better mean validation AUC before stopping.")
flags.DEFINE_list("hidden_units", [str(units) for units in _DEFAULTS.hidden_units],
                  "Widths of every task tower's layers.")
flags.DEFINE_enum("epnet_mode", _DEFAULTS.epnet_mode, ["element", "field"],
                  "EPNet gate granularity: one value per embedding unit or per field.")
flags.DEFINE_integer("gate_hidden_units", None,
                     "Hidden width of every gate; defaults to each gate's output width.")
flags.DEFINE_float("gamma", _DEFAULTS.gamma, "Upper bound of the gate values.")
flags.DEFINE_float("dropout", _DEFAULTS.dropout, "Dropout rate after every tower layer.")
flags.DEFINE_bool("use_epnet", _DEFAULTS.use_epnet, "Scale the general embeddings with EPNet.")
flags.DEFINE_bool("use_ppnet", _DEFAULTS.use_ppnet, "Scale the tower layers with PPNet's gates.")
flags.DEFINE_enum("ppnet_gate_input", _DEFAULTS.ppnet_gate_input, ["prior", "general"],
                  "What PPNet's gates read: the prior ids or the general embeddings.")
flags.DEFINE_bool("prior_in_towers", _DEFAULTS.prior_in_towers,
                  "Also feed the prior id embeddings to the towers, not only to PPNet's "
                  "gates.")
flags.DEFINE_float("dense_learning_rate", _DEFAULTS.dense_learning_rate,
                   "Adam learning rate of the dense weights.")
flags.DEFINE_integer("steps_per_execution", _DEFAULTS.steps_per_execution,
                     "Training steps run by one call of the compiled training function.")
flags.DEFINE_enum("embedding_optimizer", _DEFAULTS.embedding_optimizer,
                  list(training.EMBEDDING_OPTIMIZER_CHOICES),
                  "Optimizer of the embedding tables: one Adagrad per domain, one shared "
                  "Adagrad, or the dense Adam.")
flags.DEFINE_float("embedding_learning_rate", _DEFAULTS.embedding_learning_rate,
                   "Adagrad learning rate of the embedding tables.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of initialization and data order.")
flags.DEFINE_bool("cache_in_memory", _DEFAULTS.cache_in_memory,
                  "Parse the training and validation files once and keep the batches "
                  "in memory; turn off for data that does not fit.")
flags.DEFINE_enum("strategy", _DEFAULTS.strategy, list(distribute.STRATEGIES),
                  "tf.distribute strategy; the cluster comes from the TF_CONFIG "
                  "environment variable.")
flags.DEFINE_integer("ps_shards", _DEFAULTS.ps_shards,
                     "Maximum shards of an embedding table under --strategy="
                     "parameter_server; defaults to the number of ps tasks.")
flags.DEFINE_integer("min_shard_bytes", _DEFAULTS.min_shard_bytes,
                     "Minimum size of an embedding table shard in bytes under "
                     "--strategy=parameter_server.")
flags.DEFINE_string("warm_start_from", None,
                    "model_dir of the previous training pass: its best checkpoint seeds "
                    "this run, carrying the rows of ids that stay in the vocabularies.")
flags.DEFINE_integer("admission_window", _DEFAULTS.admission_window,
                     "Number of most recent passes, this one included, whose value counts "
                     "admit the vocabularies of features with min_frequency or "
                     "max_vocabulary_size.")
flags.DEFINE_bool("export", _DEFAULTS.export, "Export a SavedModel at the end.")
flags.DEFINE_integer("keep_exports", _DEFAULTS.keep_exports,
                     "Number of export versions kept under model_dir/export.")
flags.DEFINE_integer("verbose", _DEFAULTS.verbose,
                     "Keras progress output: 0 silent, 1 progress bar, 2 a line per epoch.")
flags.mark_flag_as_required("model_dir")


def config_from_flags() -> training.TrainConfig:
  return training.TrainConfig(
      model_dir=FLAGS.model_dir,
      dataset=FLAGS.dataset,
      data_dir=FLAGS.data_dir,
      feature_config=FLAGS.feature_config,
      train_files=FLAGS.train,
      valid_files=FLAGS.valid,
      test_files=FLAGS.test,
      batch_size=FLAGS.batch_size,
      epochs=FLAGS.epochs,
      patience=FLAGS.patience,
      hidden_units=[int(units) for units in FLAGS.hidden_units],
      epnet_mode=FLAGS.epnet_mode,
      gate_hidden_units=FLAGS.gate_hidden_units,
      gamma=FLAGS.gamma,
      dropout=FLAGS.dropout,
      use_epnet=FLAGS.use_epnet,
      use_ppnet=FLAGS.use_ppnet,
      ppnet_gate_input=FLAGS.ppnet_gate_input,
      prior_in_towers=FLAGS.prior_in_towers,
      dense_learning_rate=FLAGS.dense_learning_rate,
      steps_per_execution=FLAGS.steps_per_execution,
      embedding_optimizer=FLAGS.embedding_optimizer,
      embedding_learning_rate=FLAGS.embedding_learning_rate,
      seed=FLAGS.seed,
      cache_in_memory=FLAGS.cache_in_memory,
      strategy=FLAGS.strategy,
      ps_shards=FLAGS.ps_shards,
      min_shard_bytes=FLAGS.min_shard_bytes,
      warm_start_from=FLAGS.warm_start_from,
      admission_window=FLAGS.admission_window,
      export=FLAGS.export,
      keep_exports=FLAGS.keep_exports,
      verbose=FLAGS.verbose)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  result = training.train(config_from_flags())
  if "metrics_path" in result:
    logging.info("Test metrics written to %s", result["metrics_path"])


if __name__ == "__main__":
  app.run(main)
