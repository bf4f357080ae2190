"""Training, evaluation and export of PEPNet, callable from tests and trainers.

`train(TrainConfig(...))` prepares the data if needed and trains with `model.fit`,
stopping early on the mean validation AUC over tasks. It checkpoints every epoch, so
rerunning with the same `model_dir` resumes. At the end it restores the best epoch,
evaluates on the test split, writes `eval/test_metrics.json` and exports a
SavedModel.

`TrainConfig.strategy` selects a `tf.distribute` strategy (see
`pepnet_tf.distribute`). Under every strategy other than "default", only the chief
writes to `model_dir`, and it evaluates and exports a single-device model restored
from the best checkpoint.
"""

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, List, Mapping, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from pepnet_tf import admission as admission_lib
from pepnet_tf import distribute as distribute_lib
from pepnet_tf import export as export_lib
from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib
from pepnet_tf import metrics as metrics_lib
from pepnet_tf import optimizers as optimizers_lib
from pepnet_tf import warm_start as warm_start_lib
from pepnet_tf.model import PEPNet

DATASETS = ("movielens_100k",)
EMBEDDING_OPTIMIZER_CHOICES = ("per_domain", "shared", "adam")
_STATE_FILE = "training_state.json"
# Written by the chief under a distribution strategy: the strategy, the cluster and
# the placement of every embedding table's shards.
DISTRIBUTION_FILE = "distribution.json"
WARM_START_DIR = "warm_start"
# TrainConfig fields that shape the weights: a warm start needs them unchanged.
MODEL_FIELDS = ("hidden_units", "epnet_mode", "gate_hidden_units", "use_epnet",
                "use_ppnet", "ppnet_gate_input", "prior_in_towers", "embedding_optimizer")


@dataclasses.dataclass
class TrainConfig:
  """Everything a training run needs; written to `model_dir/config.json`.

  Attributes:
    model_dir: directory of checkpoints, logs, metrics and exports.
    dataset: a built-in dataset name, used when `feature_config` is None.
    data_dir: where built-in datasets are prepared; None uses the default cache.
    feature_config: path of a feature config JSON for any other dataset.
    train_files, valid_files, test_files: data files or glob patterns.
    batch_size: global batch size.
    epochs: maximum number of epochs.
    patience: epochs without a better mean validation AUC before stopping.
    hidden_units: widths of every task tower.
    epnet_mode, gate_hidden_units, gamma, dropout, use_epnet, use_ppnet,
      ppnet_gate_input, prior_in_towers: model options, see `pepnet_tf.model.PEPNet`.
    dense_learning_rate: Adam learning rate of the dense weights.
    steps_per_execution: training steps that one call of the compiled training
      function runs; more steps spend less time in Python between steps, with the
      same results. Applies under strategy "default"; the other strategies run
      one step per call.
    embedding_optimizer: "per_domain" (one Adagrad per domain), "shared" (one
      Adagrad) or "adam" (tables learn with the dense Adam, a baseline).
    embedding_learning_rate: Adagrad learning rate of the tables.
    seed: seed of weight initialization and data order.
    shuffle_buffer: records in the shuffle buffer.
    cache_in_memory: parse the training and validation files once and serve the
      batches from memory (`input.make_cached_dataset`); turn off for data that does
      not fit in memory. Ignored under "parameter_server", whose workers read the
      files.
    strategy: distribution strategy, one of `distribute.STRATEGIES`; the cluster
      comes from the `TF_CONFIG` environment variable.
    ps_shards: maximum number of shards of an embedding table under
      "parameter_server"; None uses one per ps task.
    min_shard_bytes: minimum bytes of a table shard under "parameter_server".
    warm_start_from: the `model_dir` of the previous training pass. Its best
      checkpoint seeds this run: weights and optimizer state, with the rows of
      the ids that both passes' vocabularies hold (see `pepnet_tf.warm_start`).
      Used only when `model_dir` has no checkpoint yet.
    admission_window: number of most recent passes, this one included, whose
      value counts admit the vocabularies of features with `min_frequency` or
      `max_vocabulary_size` (see `pepnet_tf.admission`).
    export: whether to export a SavedModel at the end.
    keep_exports: number of export versions kept under `model_dir/export`.
    verbose: Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch.
  """

  model_dir: str
  dataset: str = "movielens_100k"
  data_dir: Optional[str] = None
  feature_config: Optional[str] = None
  train_files: List[str] = dataclasses.field(default_factory=list)
  valid_files: List[str] = dataclasses.field(default_factory=list)
  test_files: List[str] = dataclasses.field(default_factory=list)
  batch_size: int = 1024
  epochs: int = 30
  patience: int = 3
  hidden_units: List[int] = dataclasses.field(default_factory=lambda: [128, 64])
  # From a sweep on MovieLens-100K (docs/BENCHMARKS.md). One EPNet gate value per
  # field raised the mean validation AUC from about 0.789 to 0.794 over element mode,
  # and dropout 0.1 to 0.2 tied on validation.
  epnet_mode: str = "field"
  gate_hidden_units: Optional[int] = None
  gamma: float = 2.0
  dropout: float = 0.2
  use_epnet: bool = True
  use_ppnet: bool = True
  ppnet_gate_input: str = "prior"
  prior_in_towers: bool = True
  dense_learning_rate: float = 1e-3
  # About 5% less CPU per example than 1, with bitwise equal weights
  # (docs/BENCHMARKS.md).
  steps_per_execution: int = 16
  embedding_optimizer: str = "per_domain"
  embedding_learning_rate: float = 0.05
  seed: int = 2023
  shuffle_buffer: int = 100_000
  cache_in_memory: bool = True
  strategy: str = "default"
  ps_shards: Optional[int] = None
  min_shard_bytes: int = distribute_lib.DEFAULT_MIN_SHARD_BYTES
  warm_start_from: Optional[str] = None
  admission_window: int = admission_lib.DEFAULT_WINDOW
  export: bool = True
  keep_exports: int = 5
  verbose: int = 2

  def validate(self) -> None:
    if self.embedding_optimizer not in EMBEDDING_OPTIMIZER_CHOICES:
      raise ValueError(
          f"embedding_optimizer must be one of {EMBEDDING_OPTIMIZER_CHOICES}. "
          f"Received: {self.embedding_optimizer!r}")
    if self.feature_config is None and self.dataset not in DATASETS:
      raise ValueError(
          f"Unknown dataset {self.dataset!r}. Built-in datasets: {list(DATASETS)}; for "
          "another dataset pass feature_config, train_files, valid_files and test_files.")
    if self.feature_config is not None and not (self.train_files and self.valid_files):
      raise ValueError("With feature_config, train_files and valid_files are required.")
    for name in ("batch_size", "epochs", "patience", "min_shard_bytes",
                 "steps_per_execution", "admission_window"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} must be >= 1. Received: {getattr(self, name)!r}")
    if self.strategy not in distribute_lib.STRATEGIES:
      raise ValueError(f"strategy must be one of {distribute_lib.STRATEGIES}. "
                       f"Received: {self.strategy!r}")
    if self.ps_shards is not None and self.ps_shards < 1:
      raise ValueError(f"ps_shards must be >= 1 or None. Received: {self.ps_shards!r}")
    if self.warm_start_from is not None and self.strategy == "parameter_server":
      raise ValueError(
          "warm_start_from is not supported under strategy 'parameter_server'; warm-start "
          "the pass under 'default' or a mirrored strategy.")
    if self.warm_start_from is not None and not tf.io.gfile.isdir(self.warm_start_from):
      raise ValueError(f"warm_start_from {self.warm_start_from!r} does not exist.")
    if self.warm_start_from is not None and not tf.io.gfile.exists(
        os.path.join(self.warm_start_from, "config.json")):
      raise ValueError(
          f"warm_start_from {self.warm_start_from!r} is not the model_dir of a training "
          "run: it has no config.json.")
    if self.strategy == "parameter_server" and self.verbose == 1:
      raise ValueError("Keras rejects verbose=1 (a progress bar per step) under "
                       "strategy 'parameter_server'; use verbose=2 or 0.")


@dataclasses.dataclass
class DataPaths:
  feature_config: str
  train: List[str]
  valid: List[str]
  test: List[str]


def resolve_data(config: TrainConfig) -> DataPaths:
  """Locate the data of `config`, preparing a built-in dataset if it is absent."""
  if config.feature_config is not None:
    return DataPaths(config.feature_config, list(config.train_files),
                     list(config.valid_files), list(config.test_files))
  from data import movielens  # pylint: disable=g-import-not-at-top

  data_dir = config.data_dir or os.path.join(movielens.default_data_dir(), "movielens_100k")
  movielens.prepare(data_dir)
  return DataPaths(
      os.path.join(data_dir, "feature_config.json"),
      [os.path.join(data_dir, "train.tfrecord")],
      [os.path.join(data_dir, "valid.tfrecord")],
      [os.path.join(data_dir, "test.tfrecord")])


def build_model(config: TrainConfig, feature_config: features_lib.FeatureConfig) -> PEPNet:
  """Build a compiled PEPNet with the optimizers that `config` names.

  The model runs `config.steps_per_execution` steps per call, so `fit` on a dataset
  of unknown size (files read by `input.make_dataset`) needs `steps_per_epoch`, and
  `validation_steps` for its validation data, unless that option is 1.
  """
  embedding_optimizer = None
  if config.embedding_optimizer != "adam":
    embedding_optimizer = optimizers_lib.DomainAdagrad(
        feature_config.num_domains,
        learning_rate=config.embedding_learning_rate,
        shared=config.embedding_optimizer == "shared")
  model = PEPNet(
      feature_config,
      hidden_units=config.hidden_units,
      epnet_mode=config.epnet_mode,
      gate_hidden_units=config.gate_hidden_units,
      gamma=config.gamma,
      dropout=config.dropout,
      use_epnet=config.use_epnet,
      use_ppnet=config.use_ppnet,
      ppnet_gate_input=config.ppnet_gate_input,
      prior_in_towers=config.prior_in_towers,
      embedding_optimizer=embedding_optimizer)
  model.compile(optimizer=tf.keras.optimizers.Adam(config.dense_learning_rate),
                steps_per_execution=_steps_per_execution(config))
  return model


def _steps_per_execution(config: TrainConfig) -> int:
  # With two or more replicas, several steps per call fail in tf_keras 2.21: the
  # sparse row gradients are gathered across replicas inside a loop, whose replicas
  # see different row counts ("Shape mismatch in the collective instance").
  if config.strategy == "default":
    return config.steps_per_execution
  return 1


def make_checkpoint(model: PEPNet) -> tf.train.Checkpoint:
  """Create a checkpoint of the weights and every optimizer state of `model`."""
  return tf.train.Checkpoint(
      model=model, optimizer=model.optimizer, embedding_optimizer=model.embedding_optimizer
      if model.embedding_optimizer is not None else tf.Module())


class EpochCheckpoint(tf.keras.callbacks.Callback):
  """Checkpoints every epoch and stops early on a monitored validation metric.

  Keras' EarlyStopping resets its counters when a run restarts, so this callback
  keeps them in a JSON file beside the checkpoints: a resumed run stops at the same
  epoch as an uninterrupted one.

  Under multi-worker training every task runs this callback, because saving reads
  variables (metrics) that all tasks aggregate together. The chief writes to
  `model_dir`. Every other task passes a `temp_dir`, saves there and deletes it at
  once, and reads the state and checkpoints of the chief in `model_dir`, which must
  therefore be on storage that all tasks share.

  Args:
    checkpoint: the `tf.train.Checkpoint` to save.
    model_dir: the run's directory; checkpoints go to `checkpoints/` and `best/`.
    patience: epochs without a better monitored value before stopping.
    monitor: the log key to maximize. Defaults to "val_auc_mean".
    temp_dir: None for the chief, else the directory where a non-chief task writes.
  """

  def __init__(self, checkpoint: tf.train.Checkpoint, model_dir: str, patience: int,
               monitor: str = "val_auc_mean", temp_dir: Optional[str] = None):
    super().__init__()
    self.monitor = monitor
    self.patience = patience
    self.model_dir = model_dir
    self.temp_dir = temp_dir
    self.is_chief = temp_dir is None
    write_dir = model_dir if self.is_chief else temp_dir
    self.manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(write_dir, "checkpoints"), max_to_keep=2)
    self.best_manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(write_dir, "best"), max_to_keep=1)
    self.state_path = os.path.join(model_dir, "checkpoints", _STATE_FILE)
    self.state = {"epoch": 0, "best": None, "best_epoch": None, "wait": 0, "stopped": False}

  @property
  def latest_checkpoint(self) -> Optional[str]:
    """The chief's latest checkpoint in `model_dir`, or None."""
    return tf.train.latest_checkpoint(os.path.join(self.model_dir, "checkpoints"))

  @property
  def best_checkpoint(self) -> Optional[str]:
    """The chief's checkpoint of the best epoch in `model_dir`, or None."""
    return tf.train.latest_checkpoint(os.path.join(self.model_dir, "best"))

  def load_state(self) -> Dict[str, Any]:
    if tf.io.gfile.exists(self.state_path):
      with tf.io.gfile.GFile(self.state_path) as handle:
        self.state = json.load(handle)
    return self.state

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    if self.monitor not in logs:
      raise ValueError(
          f"EpochCheckpoint monitors {self.monitor!r}, which is not among the logged "
          f"metrics: {sorted(logs)}. Pass validation data to fit.")
    value = float(logs[self.monitor])
    state = self.state
    state["epoch"] = epoch + 1
    if state["best"] is None or value > state["best"]:
      state.update(best=value, best_epoch=epoch + 1, wait=0)
      self.best_manager.save(checkpoint_number=epoch + 1)
    else:
      state["wait"] += 1
      if state["wait"] >= self.patience:
        state["stopped"] = True
        self.model.stop_training = True
    self.manager.save(checkpoint_number=epoch + 1)
    if not self.is_chief:
      tf.io.gfile.rmtree(self.temp_dir)
      return
    with tf.io.gfile.GFile(self.state_path, "w") as handle:
      json.dump(state, handle)


def train(config: TrainConfig) -> Dict[str, Any]:
  """Train, evaluate and export; return the test metrics and output paths.

  Under strategy "parameter_server", a "worker" or "ps" task of `TF_CONFIG` starts
  its server and never returns; only the "chief" trains. Under
  "multi_worker_mirrored", a task other than the chief trains and returns
  `{"model_dir": ..., "chief": False}` without evaluating or exporting.
  """
  config.validate()
  task = distribute_lib.LOCAL_TASK
  if config.strategy != "default":
    task = distribute_lib.current_task()
  if distribute_lib.is_server_task(config.strategy, task):
    distribute_lib.run_server(task)
  # Created first: a multi-worker strategy configures collective ops, which
  # TensorFlow expects at program startup.
  strategy = distribute_lib.make_strategy(config.strategy, config.ps_shards,
                                          config.min_shard_bytes)
  chief = distribute_lib.is_chief(strategy)
  tf.io.gfile.makedirs(config.model_dir)
  paths = resolve_data(config)
  feature_config = features_lib.load(paths.feature_config)
  for files in (paths.train, paths.valid) + ((paths.test,) if paths.test else ()):
    input_lib.validate_files(feature_config, files)
  admission = _admit(config, feature_config, paths, chief)
  feature_config = admission.config
  config = _effective_config(config, admission.report)
  logging.info("Embedding tables:\n%s", admission_lib.format_report(admission.report))
  if chief:
    _write_json(os.path.join(config.model_dir, "config.json"),
                {"train": dataclasses.asdict(config), "data": dataclasses.asdict(paths)})
    feature_config.save(os.path.join(config.model_dir, "feature_config.json"))

  tf.keras.utils.set_random_seed(config.seed)
  with strategy.scope():
    model = build_model(config, feature_config)
    model(_example_batch(feature_config))  # create every weight before a restore
  for component, count in model.parameter_counts().items():
    logging.info("Parameters of %s: %s", component, f"{count:,}")
  if config.strategy != "default" and chief:
    distribute_lib.write_description(
        os.path.join(config.model_dir, DISTRIBUTION_FILE), config.strategy, strategy,
        task, model.embeddings.tables)

  checkpoint = make_checkpoint(model)
  temp_dir = None if chief else distribute_lib.task_temp_dir(config.model_dir, strategy)
  saver = EpochCheckpoint(checkpoint, config.model_dir, config.patience, temp_dir=temp_dir)
  state = saver.load_state()
  warm_start_stats = None
  if saver.latest_checkpoint:
    status = checkpoint.restore(saver.latest_checkpoint)
    if state["stopped"] or state["epoch"] >= config.epochs:
      # No step runs, so the optimizer slots are never created to take their values.
      status.expect_partial()
    logging.info("Resumed from %s after epoch %d", saver.latest_checkpoint, state["epoch"])
  elif config.warm_start_from is not None:
    path, warm_start_stats = write_warm_start(
        config, feature_config, os.path.join(temp_dir or config.model_dir, WARM_START_DIR))
    with strategy.scope():
      # Slots built now, in training order, take their values from the checkpoint.
      warm_start_lib.build_optimizer_state(model)
    checkpoint.restore(path).assert_existing_objects_matched()
    logging.info("Warm-started from %s", config.warm_start_from)

  initial_epoch = state["epoch"]
  if not state["stopped"] and initial_epoch < config.epochs:
    num_records = input_lib.count_records(feature_config, paths.train)
    steps = input_lib.steps_per_epoch(num_records, config.batch_size)
    train_input = _training_input(config, strategy, feature_config, paths, initial_epoch)
    callbacks = [saver]
    validation_data = None
    if config.strategy == "parameter_server":
      # Workers run only training steps; the chief scores the validation split.
      callbacks.insert(0, ChiefValidation(
          model, feature_config, _validation_dataset(config, feature_config, paths)))
    else:
      validation_data = _validation_input(config, feature_config, paths)
    validation_steps = None
    if validation_data is not None and _steps_per_execution(config) > 1:
      # Keras needs the size of the validation data to run several steps per call.
      validation_steps = input_lib.steps_per_epoch(
          input_lib.count_records(feature_config, paths.valid), config.batch_size)
    if chief:
      callbacks.append(tf.keras.callbacks.TensorBoard(
          os.path.join(config.model_dir, "logs"), profile_batch=0))
    model.fit(train_input, epochs=config.epochs, initial_epoch=initial_epoch,
              steps_per_epoch=steps, validation_data=validation_data,
              validation_steps=validation_steps, callbacks=callbacks,
              verbose=config.verbose)

  if not chief:
    return {"model_dir": config.model_dir, "chief": False}
  best = saver.best_checkpoint
  if config.strategy != "default":
    # Evaluate and export on one device: the variables may sit on other tasks.
    model = restore_model(config, feature_config, best or saver.latest_checkpoint)
  elif best:
    checkpoint.restore(best).expect_partial()
  if best:
    logging.info("Restored the best epoch %s (val_auc_mean %.4f)",
                 saver.state["best_epoch"], saver.state["best"])

  result = {"model_dir": config.model_dir, "chief": True,
            "best_epoch": saver.state["best_epoch"],
            "parameter_counts": model.parameter_counts(),
            "admission": admission.report}
  if warm_start_stats is not None:
    result["warm_start"] = warm_start_stats
  if paths.test:
    test_dataset = input_lib.make_dataset(
        feature_config, paths.test, config.batch_size, training=False)
    test_metrics = evaluate_dataset(model_scorer(model), feature_config, test_dataset)
    metrics_path = os.path.join(config.model_dir, "eval", "test_metrics.json")
    tf.io.gfile.makedirs(os.path.dirname(metrics_path))
    _write_json(metrics_path, test_metrics)
    print(format_metrics_table(test_metrics, feature_config))
    result.update(test_metrics=test_metrics, metrics_path=metrics_path)
  if config.export:
    result["export_path"] = export_lib.export_versioned(
        model, feature_config, os.path.join(config.model_dir, "export"),
        keep=config.keep_exports,
        warmup_rows=export_lib.read_warmup_rows(feature_config, paths.valid))
    logging.info("Exported the SavedModel to %s", result["export_path"])
  return result


def _training_input(config: TrainConfig, strategy: tf.distribute.Strategy,
                    feature_config: features_lib.FeatureConfig, paths: DataPaths,
                    initial_epoch: int):
  """Return the `x` of `model.fit`: a dataset, a distributed dataset or a DatasetCreator.

  One pipeline ("default", "mirrored") yields global batches, which a mirrored
  strategy splits over its replicas. Under the multi-worker strategies each worker
  has its own pipeline, which reads the worker's share of the rows through
  `tf.distribute.InputContext` and repeats it, so that no worker runs out of
  batches. An epoch is then `steps_per_epoch` global steps, and a worker's stream
  does not break at epoch ends.
  """
  stream = dict(seed=config.seed, initial_epoch=initial_epoch, epochs=config.epochs)
  if config.strategy == "parameter_server":
    # NOTE: the cached pipeline would capture all rows as constants of the function
    # that the chief sends to every worker, so workers always read the files.
    if config.cache_in_memory:
      logging.info("cache_in_memory is ignored under strategy 'parameter_server'.")
    dataset_fn = input_lib.input_fn(feature_config, paths.train, config.batch_size,
                                    training=True, shuffle_buffer=config.shuffle_buffer,
                                    **stream)
    return tf.keras.utils.experimental.DatasetCreator(
        lambda context: dataset_fn(context).repeat())

  def make(batch_size: int, context: Optional[tf.distribute.InputContext] = None):
    if config.cache_in_memory:
      return input_lib.make_cached_dataset(feature_config, paths.train, batch_size,
                                           input_context=context, **stream)
    return input_lib.make_dataset(feature_config, paths.train, batch_size, training=True,
                                  shuffle_buffer=config.shuffle_buffer,
                                  input_context=context, **stream)

  if config.strategy != "multi_worker_mirrored":
    return make(config.batch_size)

  def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
    return make(context.get_per_replica_batch_size(config.batch_size), context).repeat()

  return strategy.distribute_datasets_from_function(dataset_fn)


def _validation_dataset(config: TrainConfig, feature_config: features_lib.FeatureConfig,
                        paths: DataPaths) -> tf.data.Dataset:
  dataset = input_lib.make_dataset(feature_config, paths.valid, config.batch_size,
                                   training=False)
  return dataset.cache() if config.cache_in_memory else dataset


def _validation_input(config: TrainConfig, feature_config: features_lib.FeatureConfig,
                      paths: DataPaths) -> tf.data.Dataset:
  """Return the `validation_data` of `model.fit` for every strategy but "parameter_server".

  Under "multi_worker_mirrored", every worker reads the whole split and scores every
  `num_workers`-th batch (`AutoShardPolicy.DATA`), and the metrics are summed over
  workers. The split has fewer files than workers more often than not, which rules
  out sharding by file.
  """
  dataset = _validation_dataset(config, feature_config, paths)
  if config.strategy == "multi_worker_mirrored":
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    dataset = dataset.with_options(options)
  return dataset


class ChiefValidation(tf.keras.callbacks.Callback):
  """Scores the validation split on the chief at every epoch end and logs `val_*`.

  Under ParameterServerStrategy the workers run training steps only, so this callback
  replaces the validation of `model.fit`. The values are exact (see
  `evaluate_dataset`): `val_auc/<task>`, `val_logloss/<task>`, `val_gauc/<task>`,
  per-domain AUC, and `val_auc_mean`, the mean AUC over tasks. Put it before the
  callbacks that read these values.
  """

  def __init__(self, model: PEPNet, feature_config: features_lib.FeatureConfig,
               dataset: tf.data.Dataset):
    super().__init__()
    self.scorer = model_scorer(model)
    self.feature_config = feature_config
    self.dataset = dataset

  def on_epoch_end(self, epoch, logs=None):
    if logs is None:
      return
    metrics = evaluate_dataset(self.scorer, self.feature_config, self.dataset)
    logs.update({f"val_{name}": value for name, value in metrics.items()})
    logs["val_auc_mean"] = float(np.mean(
        [metrics[f"auc/{name}"] for name in self.feature_config.task_names]))


def _admit(config: TrainConfig, feature_config: features_lib.FeatureConfig,
           paths: DataPaths, chief: bool) -> admission_lib.AdmissionResult:
  """Admit the vocabularies of this run, or reload those of an earlier attempt.

  A rerun of the same `model_dir` reuses the vocabularies that the first attempt
  admitted, so that its checkpoints still fit the tables.
  """
  report = admission_lib.read_report(config.model_dir)
  saved_config = os.path.join(config.model_dir, "feature_config.json")
  if report is not None and tf.io.gfile.exists(saved_config):
    return admission_lib.AdmissionResult(features_lib.load(saved_config), report)
  return admission_lib.admit_vocabularies(
      feature_config, paths.train, config.model_dir if chief else None,
      window=config.admission_window, previous_dir=config.warm_start_from,
      test_files=paths.test)


def _effective_config(config: TrainConfig, report: Mapping[str, Any]) -> TrainConfig:
  """Return `config` with the admission settings that the run's vocabularies used.

  A rerun of a `model_dir` keeps the vocabularies of its first attempt, so a changed
  `admission_window` or `warm_start_from` has no effect. `config.json` then records
  the values in effect.
  """
  used = {"admission_window": report["window"], "warm_start_from": report["previous_dir"]}
  ignored = {name: value for name, value in used.items() if getattr(config, name) != value}
  if not ignored:
    return config
  logging.warning(
      "%s already admitted its vocabularies with %s; the values given now (%s) are "
      "ignored. Use a new model_dir to change them.", config.model_dir, used,
      {name: getattr(config, name) for name in ignored})
  return dataclasses.replace(config, **used)


def check_warm_start_config(config: TrainConfig, previous: "TrainConfig") -> None:
  """Raise IncompatibleModelError if a field of `MODEL_FIELDS` changed."""
  changed = [f"{name}: {getattr(previous, name)!r} -> {getattr(config, name)!r}"
             for name in MODEL_FIELDS if getattr(previous, name) != getattr(config, name)]
  if changed:
    raise warm_start_lib.IncompatibleModelError(
        f"The run in {config.warm_start_from} has another architecture or embedding "
        f"optimizer, so it cannot warm-start this one: {'; '.join(changed)}")


def write_warm_start(config: TrainConfig, feature_config: features_lib.FeatureConfig,
                     directory: str):
  """Seed a new model from `config.warm_start_from` and checkpoint it in `directory`.

  The new model is built on one device with the seed of `config`, so a new id's
  row is the row that a fresh model of the same seed starts with.

  Returns:
    `(checkpoint path, stats)`, the stats of `warm_start.warm_start`.
  """
  previous_dir = config.warm_start_from
  with tf.io.gfile.GFile(os.path.join(previous_dir, "config.json")) as handle:
    previous_config = TrainConfig(**json.load(handle)["train"])
  check_warm_start_config(config, previous_config)
  previous_features = features_lib.load(os.path.join(previous_dir, "feature_config.json"))
  warm_start_lib.check_feature_configs(previous_features, feature_config)
  best = tf.train.latest_checkpoint(os.path.join(previous_dir, "best"))
  if best is None:
    best = tf.train.latest_checkpoint(os.path.join(previous_dir, "checkpoints"))
  if best is None:
    raise FileNotFoundError(f"No checkpoint found in {previous_dir} to warm-start from.")
  previous_model = restore_model(previous_config, previous_features, best,
                                 optimizer_state=True)

  tf.keras.utils.set_random_seed(config.seed)
  model = build_model(config, feature_config)
  model(_example_batch(feature_config))
  stats = warm_start_lib.warm_start(model, feature_config, previous_model, previous_features)
  path = make_checkpoint(model).save(os.path.join(directory, "ckpt"))
  logging.info("Warm start from %s (%s): %s", previous_dir, best, stats)
  return path, stats


def restore_model(config: TrainConfig, feature_config: features_lib.FeatureConfig,
                  path: str, optimizer_state: bool = False) -> PEPNet:
  """Build the model of `config` on one device and restore the checkpoint `path`.

  A checkpoint written under any strategy restores here: a table sharded across
  parameter servers is saved as one tensor, and so are the optimizer slots of its
  shards. Optimizer slots are restored when an optimizer creates them;
  `optimizer_state=True` creates them at once, so that they hold the checkpoint's
  values on return.
  """
  if path is None:
    raise FileNotFoundError(f"No checkpoint found in {config.model_dir}.")
  model = build_model(config, feature_config)
  model(_example_batch(feature_config))
  if optimizer_state:
    warm_start_lib.build_optimizer_state(model)
  make_checkpoint(model).restore(path).expect_partial()
  logging.info("Restored %s", path)
  return model


def load_trained_model(model_dir: str, checkpoint: str = "best"):
  """Rebuild the model of a training run and restore a checkpoint of it.

  Args:
    model_dir: the run's directory, with `config.json` and `feature_config.json`.
    checkpoint: "best", "latest", or the path of a checkpoint.

  Returns:
    `(model, feature_config, data_paths)`.
  """
  config_path = os.path.join(model_dir, "config.json")
  if not tf.io.gfile.exists(config_path):
    raise FileNotFoundError(
        f"{config_path} not found: {model_dir!r} is not the model_dir of a training run.")
  with tf.io.gfile.GFile(config_path) as handle:
    saved = json.load(handle)
  config = TrainConfig(**saved["train"])
  paths = DataPaths(**saved["data"])
  feature_config = features_lib.load(os.path.join(model_dir, "feature_config.json"))

  if checkpoint in ("best", "latest"):
    directory = os.path.join(model_dir, "best" if checkpoint == "best" else "checkpoints")
    path = tf.train.latest_checkpoint(directory)
    if path is None:
      raise FileNotFoundError(f"No checkpoint found in {directory}.")
  else:
    path = checkpoint
  return restore_model(config, feature_config, path), feature_config, paths


def _example_batch(feature_config: features_lib.FeatureConfig) -> Dict[str, tf.Tensor]:
  """Build one row of placeholder values, enough to create every weight of the model."""
  batch = {}
  for spec in feature_config.input_features:
    if spec.name == feature_config.domain.feature:
      value = feature_config.domain.values[0]
    else:
      value = {"int64": 0, "float32": 0.0, "string": ""}[spec.dtype]
    dtype = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}[spec.dtype]
    batch[spec.name] = tf.constant([value], dtype=dtype)
  return batch


Scorer = Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]


def model_scorer(model: PEPNet) -> Scorer:
  """A function from a batch of raw features to probabilities per task."""
  return tf.function(lambda features: model(features, training=False))


def savedmodel_scorer(export_dir: str) -> Scorer:
  """Score batches through the `serving_default` signature of a SavedModel."""
  signature = tf.saved_model.load(export_dir).signatures["serving_default"]
  input_names = set(signature.structured_input_signature[1])
  return lambda features: signature(
      **{name: value for name, value in features.items() if name in input_names})


def evaluate_dataset(scorer: Scorer, feature_config: features_lib.FeatureConfig,
                     dataset: tf.data.Dataset) -> Dict[str, float]:
  """Exact AUC, GAUC and log loss of `scorer` over one pass of `dataset`."""
  task_names = feature_config.task_names
  labels = {name: [] for name in task_names}
  scores = {name: [] for name in task_names}
  domain_values, user_ids = [], []
  for features, batch_labels in dataset:
    outputs = scorer(features)
    for name in task_names:
      labels[name].append(batch_labels[name].numpy())
      scores[name].append(np.asarray(outputs[name]))
    domain_values.append(features[feature_config.domain.feature].numpy())
    if feature_config.user_id_feature is not None:
      user_ids.append(features[feature_config.user_id_feature].numpy())

  domain_index = _domain_indices(np.concatenate(domain_values), feature_config)
  return metrics_lib.ranking_metrics(
      task_names,
      {name: np.concatenate(values) for name, values in labels.items()},
      {name: np.concatenate(values) for name, values in scores.items()},
      domain_index, feature_config.num_domains,
      np.concatenate(user_ids) if user_ids else None)


def _domain_indices(values: np.ndarray,
                    feature_config: features_lib.FeatureConfig) -> np.ndarray:
  """Domain index of every raw domain value; the fallback (or -1) if unknown."""
  known = list(feature_config.domain.values)
  raw = values.tolist()
  if feature_config.domain_feature.dtype == "string":
    raw = [value.decode() if isinstance(value, bytes) else value for value in raw]
  positions = {value: index for index, value in enumerate(known)}
  fallback = feature_config.domain.fallback
  default = -1 if fallback is None else positions[fallback]
  return np.array([positions.get(value, default) for value in raw], dtype=np.int64)


def format_metrics_table(metrics: Mapping[str, float],
                         feature_config: features_lib.FeatureConfig) -> str:
  """Format a text table with one row per task: AUC, GAUC, log loss, AUC per domain."""
  domain_columns = [f"auc d{index}" for index in range(feature_config.num_domains)]
  header = ["task", "auc", "gauc", "logloss"] + domain_columns
  rows = []
  for name in feature_config.task_names:
    row = [name] + [_format(metrics.get(f"{key}/{name}")) for key in ("auc", "gauc", "logloss")]
    row += [_format(metrics.get(f"auc/{name}/domain_{index}"))
            for index in range(feature_config.num_domains)]
    rows.append(row)
  widths = [max(len(str(row[column])) for row in [header] + rows)
            for column in range(len(header))]
  lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths))
           for row in [header] + rows]
  return "\n".join(lines)


def _format(value: Optional[float]) -> str:
  if value is None:
    return "-"
  return "nan" if math.isnan(value) else f"{value:.4f}"


def _write_json(path: str, payload: Any) -> None:
  with tf.io.gfile.GFile(path, "w") as handle:
    json.dump(payload, handle, indent=2, sort_keys=True)
    handle.write("\n")
