"""Distributed training: table sharding, sharded per-domain Adagrad, mirrored parity,
a parameter-server cluster with a worker restart, and checkpoint portability.

The cluster tests start chief, worker and ps tasks with the trainer's own command on
127.0.0.1. TensorFlow's gRPC server listens on every interface, whatever address the
cluster names. So each cluster runs inside a private network namespace that has only
loopback: `unshare -n`, then `ip link set lo up`, which needs root. Where no such
namespace can be made, the cluster tests are skipped and say why.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from absl.testing import parameterized
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

import synthetic
from pepnet_tf import distribute
from pepnet_tf import input as input_lib
from pepnet_tf import optimizers
from pepnet_tf import training

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([_REPO_ROOT, _TESTS_DIR]),
            TF_CPP_MIN_LOG_LEVEL="1")
# Fixed ports are safe inside the private namespace, where nothing else listens.
_CLUSTER = {
    "chief": ["127.0.0.1:20000"],
    "worker": ["127.0.0.1:20001", "127.0.0.1:20002"],
    "ps": ["127.0.0.1:20003", "127.0.0.1:20004"],
}
_CLUSTER_TIMEOUT_S = 240


def _namespace_skip_reason():
  """Return why a private network namespace cannot be made here, or None."""
  for tool in ("unshare", "ip"):
    if shutil.which(tool) is None:
      return f"`{tool}` is not installed, so no private network namespace can be made."
  try:
    completed = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                               capture_output=True, text=True, timeout=30)
  except subprocess.TimeoutExpired:
    return "`unshare -n` timed out."
  if completed.returncode != 0:
    return ("`unshare -n` failed (it needs root or CAP_SYS_ADMIN), so the gRPC servers "
            "of a local cluster would listen on every interface: "
            + completed.stderr.strip())
  return None


def _trainer_flags(paths, model_dir, **overrides):
  flags = dict(model_dir=model_dir, feature_config=paths["feature_config"],
               train=paths["train"], valid=paths["valid"], test=paths["test"],
               batch_size=64, epochs=2, patience=10, hidden_units="8,4", verbose=2)
  flags.update(overrides)
  return [f"--{name}={value}" for name, value in flags.items()]


def _checkpoint_tensors(path, prefix=""):
  """Variable values of a checkpoint by key, without the save counter."""
  reader = tf.train.load_checkpoint(path)
  return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
          if name.startswith(prefix) and name.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
          and not name.startswith("save_counter")}


# Cluster scenarios, run inside the private namespace by `_run_in_namespace`.


class _Tasks:
  """Trainer processes of one cluster: `python -m trainers.train FLAGS` per task."""

  def __init__(self, cluster, flags, log_dir):
    self.cluster = cluster
    self.command = [sys.executable, "-m", "trainers.train"] + flags
    self.log_dir = log_dir
    self.processes = {}
    self.logs = []

  def start(self, task_type, index, log_name=None):
    env = dict(_ENV, TF_CONFIG=json.dumps(
        {"cluster": self.cluster, "task": {"type": task_type, "index": index}}))
    log_name = log_name or f"{task_type}_{index}"
    log = open(os.path.join(self.log_dir, f"{log_name}.log"), "a", encoding="utf-8")
    self.logs.append(log)
    self.processes[(task_type, index)] = subprocess.Popen(
        self.command, env=env, cwd=_REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
    return self.processes[(task_type, index)]

  def stop_all(self):
    for process in self.processes.values():
      if process.poll() is None:
        process.kill()
        process.wait()
    for log in self.logs:
      log.close()


def _parameter_server_scenario(request, deadline):
  """Train on chief + 2 workers + 2 ps; kill worker 1 during epoch 2 and restart it."""
  tasks = _Tasks(_CLUSTER, request["flags"], request["log_dir"])
  checkpoints = os.path.join(request["model_dir"], "checkpoints")
  events = {"worker_killed_after_epoch": None, "worker_restarted": False}
  try:
    for task_type, index in (("ps", 0), ("ps", 1), ("worker", 0), ("worker", 1)):
      tasks.start(task_type, index)
    chief = tasks.start("chief", 0)
    first_epoch = os.path.join(checkpoints, "ckpt-1.index")
    while not os.path.exists(first_epoch) and chief.poll() is None:
      if time.monotonic() > deadline:
        break
      time.sleep(0.05)
    if os.path.exists(first_epoch) and chief.poll() is None:
      # Epoch 2 is running: kill worker 1 without warning, then start it again.
      tasks.processes[("worker", 1)].send_signal(signal.SIGKILL)
      tasks.processes[("worker", 1)].wait()
      second_epoch_done = os.path.exists(os.path.join(checkpoints, "ckpt-2.index"))
      events["worker_killed_after_epoch"] = 2 if second_epoch_done else 1
      time.sleep(1)
      tasks.start("worker", 1)
      events["worker_restarted"] = True
    try:
      events["chief_returncode"] = chief.wait(max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      events["chief_returncode"] = "timeout"
    events["restarted_worker_alive"] = tasks.processes[("worker", 1)].poll() is None
  finally:
    tasks.stop_all()
  return events


def _multi_worker_scenario(request, deadline):
  """Train on 2 mirrored workers; worker 0 is the chief."""
  tasks = _Tasks({"worker": _CLUSTER["worker"]}, request["flags"], request["log_dir"])
  try:
    workers = [tasks.start("worker", index) for index in (1, 0)]
    codes = []
    for worker in workers:
      try:
        codes.append(worker.wait(max(1.0, deadline - time.monotonic())))
      except subprocess.TimeoutExpired:
        codes.append("timeout")
  finally:
    tasks.stop_all()
  return {"returncodes": codes}


def run_scenario(request_path):
  """Run the scenario that `request_path` names and write `events.json` to its log_dir.

  The request is `{"scenario", "paths", "model_dir", "log_dir", "flags"}`. Every task
  runs `python -m trainers.train` with the same flags and its own TF_CONFIG.
  """
  with open(request_path, encoding="utf-8") as handle:
    request = json.load(handle)
  scenarios = {"parameter_server": _parameter_server_scenario,
               "multi_worker_mirrored": _multi_worker_scenario}
  events = scenarios[request["scenario"]](request, time.monotonic() + _CLUSTER_TIMEOUT_S)
  with open(os.path.join(request["log_dir"], "events.json"), "w", encoding="utf-8") as handle:
    json.dump(events, handle)


def _run_in_namespace(request):
  """Run `run_scenario(request)` in a new network namespace; return its events."""
  request_path = os.path.join(request["log_dir"], "request.json")
  with open(request_path, "w", encoding="utf-8") as handle:
    json.dump(request, handle)
  script = f"import test_distribute; test_distribute.run_scenario({request_path!r})"
  completed = subprocess.run(
      ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" -c "$1"',
       sys.executable, script],
      env=_ENV, cwd=_REPO_ROOT, capture_output=True, text=True,
      timeout=_CLUSTER_TIMEOUT_S + 60)
  events_path = os.path.join(request["log_dir"], "events.json")
  if completed.returncode != 0 or not os.path.exists(events_path):
    raise AssertionError(f"The cluster scenario failed ({completed.returncode}): "
                         f"{completed.stderr[-3000:]}")
  with open(events_path, encoding="utf-8") as handle:
    return json.load(handle)


def _log_tail(log_dir, name, size=4000):
  path = os.path.join(log_dir, f"{name}.log")
  if not os.path.exists(path):
    return f"{path} missing"
  with open(path, encoding="utf-8", errors="replace") as handle:
    return handle.read()[-size:]


def _new_cluster_dirs(prefix):
  """Return `(root, paths, model_dir, log_dir)` for one cluster run on the test data."""
  root = tempfile.mkdtemp(prefix=prefix)
  paths = synthetic.write_dataset(os.path.join(root, "data"), "tfrecord")
  log_dir = os.path.join(root, "logs")
  os.makedirs(log_dir)
  return root, paths, os.path.join(root, "model"), log_dir


# Each cluster runs once in a single test method, so that `pytest -n 2`, which may
# send the methods of one class to different processes, does not run it twice.


class ParameterServerClusterTest(tf.test.TestCase):
  """One run of chief + 2 workers + 2 ps, checked from several sides."""

  def setUp(self):
    super().setUp()
    skip_reason = _namespace_skip_reason()
    if skip_reason:
      self.skipTest(skip_reason)
    root, self.paths, self.model_dir, self.log_dir = _new_cluster_dirs("pepnet_ps_")
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)

  def test_cluster_trains_and_restores(self):
    # 38 steps per epoch (batch 16): long enough to kill a worker in mid-epoch.
    flags = _trainer_flags(self.paths, self.model_dir, strategy="parameter_server",
                           ps_shards=2, min_shard_bytes=256, batch_size=16, epochs=3)
    self.events = _run_in_namespace({"scenario": "parameter_server", "paths": self.paths,
                                     "model_dir": self.model_dir, "log_dir": self.log_dir,
                                     "flags": flags})
    self._check_worker_restart()
    self._check_tables_sharded_on_both_ps()
    self._check_restore_on_one_device()
    self._check_only_chief_writes()

  def _check_worker_restart(self):
    chief_log = _log_tail(self.log_dir, "chief_0")
    self.assertEqual(self.events["chief_returncode"], 0, chief_log)
    self.assertTrue(self.events["worker_restarted"], chief_log)
    # Killed after epoch 1 ended and before epoch 2's checkpoint: during epoch 2.
    self.assertEqual(self.events["worker_killed_after_epoch"], 1, chief_log)
    self.assertTrue(self.events["restarted_worker_alive"],
                    _log_tail(self.log_dir, "worker_1"))
    # The coordinator took the restarted worker back (during training or export).
    self.assertIn("Worker /job:worker/replica:0/task:1 has been recovered",
                  _log_tail(self.log_dir, "chief_0", 1_000_000))
    with open(os.path.join(self.model_dir, "checkpoints", "training_state.json")) as handle:
      state = json.load(handle)
    self.assertEqual(state["epoch"], 3)
    self.assertTrue(os.path.exists(os.path.join(self.model_dir, "eval",
                                                "test_metrics.json")))

  def _check_tables_sharded_on_both_ps(self):
    with open(os.path.join(self.model_dir, training.DISTRIBUTION_FILE)) as handle:
      description = json.load(handle)
    self.assertEqual(description["strategy"], "parameter_server")
    item = description["tables"]["item_id"]
    self.assertTrue(item["sharded"])
    self.assertEqual(item["shape"], [64, 4])
    self.assertEqual([shard["rows"] for shard in item["shards"]], [32, 32])
    self.assertEqual([shard["device"] for shard in item["shards"]],
                     ["/job:ps/replica:0/task:0/device:CPU:0",
                      "/job:ps/replica:0/task:1/device:CPU:0"])
    # 6 x 4 float32 is 96 bytes, less than two shards of min_shard_bytes=256.
    self.assertFalse(description["tables"]["age"]["sharded"])
    self.assertLen(description["tables"]["age"]["shards"], 1)

  def _check_restore_on_one_device(self):
    model, feature_config, _ = training.load_trained_model(self.model_dir)
    self.assertFalse(distribute.is_sharded(model.embeddings.tables["item_id"]))
    best = tf.train.latest_checkpoint(os.path.join(self.model_dir, "best"))
    saved = _checkpoint_tensors(best, prefix="model/")
    self.assertIn("model/embeddings/table_item_id/.ATTRIBUTES/VARIABLE_VALUE", saved)
    # Every weight of the single-device model, written again, equals the original.
    rewritten = training.make_checkpoint(model).write(
        os.path.join(tempfile.mkdtemp(dir=self.get_temp_dir()), "restored"))
    restored = _checkpoint_tensors(rewritten, prefix="model/")
    self.assertCountEqual(restored, saved)
    for name in saved:
      self.assertAllEqual(restored[name], saved[name], msg=name)

    # The accumulators of the item table's shards restore as one accumulator. An
    # optimizer numbers its slots in the order in which the train step passes the
    # tables, which is the order of the lookups.
    features, _ = next(iter(input_lib.make_dataset(
        feature_config, [self.paths["test"]], 50, training=False)))
    table_order = list(model.embeddings.lookup(features))
    adagrad = model.embedding_optimizer.optimizers[0]
    adagrad.build([model.embeddings.tables[name] for name in table_order])
    slot = table_order.index("item_id") + 1  # slot 0 is the iteration count
    accumulator = tf.train.load_checkpoint(best).get_tensor(
        f"embedding_optimizer/optimizers/0/_variables/{slot}/.ATTRIBUTES/VARIABLE_VALUE")
    self.assertEqual(accumulator.shape, (64, 4))
    self.assertAllEqual(adagrad.variables[slot].numpy(), accumulator)

    # The SavedModel that the chief exported scores as the restored model does.
    export_base = os.path.join(self.model_dir, "export")
    export_dir = os.path.join(export_base, sorted(os.listdir(export_base))[-1])
    expected = model(features, training=False)
    served = training.savedmodel_scorer(export_dir)(features)
    for task in feature_config.task_names:
      self.assertAllClose(served[task], expected[task], atol=1e-6, msg=task)

  def _check_only_chief_writes(self):
    self.assertEqual(tf.io.gfile.glob(os.path.join(self.model_dir, "tmp_*")), [])
    for task in ("worker_0", "ps_0"):
      self.assertIn("Started the grpc server", _log_tail(self.log_dir, task, 100_000))


class MultiWorkerMirroredTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    skip_reason = _namespace_skip_reason()
    if skip_reason:
      self.skipTest(skip_reason)
    root, self.paths, self.model_dir, self.log_dir = _new_cluster_dirs("pepnet_mwms_")
    self.addCleanup(shutil.rmtree, root, ignore_errors=True)

  def test_two_workers_only_chief_writes(self):
    flags = _trainer_flags(self.paths, self.model_dir, strategy="multi_worker_mirrored",
                           epochs=1, export=False)
    events = _run_in_namespace({"scenario": "multi_worker_mirrored", "paths": self.paths,
                                "model_dir": self.model_dir, "log_dir": self.log_dir,
                                "flags": flags})
    self.assertEqual(events["returncodes"], [0, 0], _log_tail(self.log_dir, "worker_0"))
    with open(os.path.join(self.model_dir, "checkpoints", "training_state.json")) as handle:
      self.assertEqual(json.load(handle)["epoch"], 1)
    with open(os.path.join(self.model_dir, training.DISTRIBUTION_FILE)) as handle:
      self.assertEqual(json.load(handle)["num_replicas"], 2)

    # Worker 1 saves to model_dir/tmp_worker_1 and deletes it after every save.
    self.assertEqual(tf.io.gfile.glob(os.path.join(self.model_dir, "tmp_*")), [])
    self.assertTrue(os.path.exists(os.path.join(self.model_dir, "eval",
                                                "test_metrics.json")))
    # Worker 0 is the chief: only it evaluates on the test split and prints the table.
    self.assertIn("auc d2", _log_tail(self.log_dir, "worker_0", 1_000_000))
    self.assertNotIn("auc d2", _log_tail(self.log_dir, "worker_1", 1_000_000))


# Per-domain Adagrad on a table sharded in two, in one process.


def _sharded_variable(value, rows_per_shard, name):
  """A ShardedVariable of `value` split into consecutive row ranges."""
  shards, first_row = [], 0
  for index, rows in enumerate(rows_per_shard):
    shards.append(tf.Variable(value[first_row:first_row + rows], name=f"{name}/part_{index}"))
    first_row += rows
  return tf.__internal__.distribute.ShardedVariable(shards)


class ShardedDomainAdagradTest(tf.test.TestCase, parameterized.TestCase):

  def _apply_twice(self, table, shared):
    rng = np.random.default_rng(3)
    optimizer = optimizers.DomainAdagrad(3, learning_rate=[0.05, 0.2, 0.01] if not shared
                                         else 0.05, shared=shared)
    for _ in range(2):
      # Ids on both sides of the shard boundary (row 4), some in several domains.
      ids = tf.constant([0, 3, 4, 6, 3, 4, 4, 1], tf.int64)
      domains = tf.constant([0, 0, 1, 1, 2, 2, 0, 1], tf.int32)
      gradient = tf.constant(rng.normal(size=(8, 2)), tf.float32)
      optimizer.apply([table], [gradient], [ids], domains)
    return optimizer

  def _accumulators(self, optimizer):
    # `variables` lists the iteration count, then one accumulator per table. A
    # sharded table's accumulator is a ShardedVariable of one accumulator per shard.
    return [adagrad.variables[1] for adagrad in optimizer.optimizers]

  @parameterized.named_parameters(("per_domain", False), ("shared", True))
  def test_sharded_matches_unsharded(self, shared):
    value = np.random.default_rng(0).normal(size=(7, 2)).astype(np.float32)
    plain = tf.Variable(value)
    sharded = _sharded_variable(value, [4, 3], f"table_{shared}")
    plain_optimizer = self._apply_twice(plain, shared)
    sharded_optimizer = self._apply_twice(sharded, shared)

    self.assertAllClose(tf.concat(sharded.variables, 0), plain, rtol=1e-6, atol=1e-7)
    for expected, actual in zip(self._accumulators(plain_optimizer),
                                self._accumulators(sharded_optimizer)):
      self.assertTrue(distribute.is_sharded(actual))
      self.assertLen(actual.variables, 2)
      self.assertAllClose(actual.numpy(), expected.numpy(), rtol=1e-6, atol=1e-7)

  def test_rows_only_touched_by_own_domain(self):
    value = np.zeros((7, 2), np.float32)
    sharded = _sharded_variable(value, [4, 3], "table_isolation")
    optimizer = self._apply_twice(sharded, shared=False)
    touched = {0: {0, 3, 4}, 1: {4, 6, 1}, 2: {3, 4}}
    for domain, accumulator in enumerate(self._accumulators(optimizer)):
      accumulator = accumulator.numpy()
      for row in range(7):
        changed = bool(np.any(accumulator[row] != 0.1))
        self.assertEqual(changed, row in touched[domain], f"domain {domain}, row {row}")
    # Rows 2 and 5 belong to no sample and keep their value in both shards.
    self.assertAllEqual(sharded.variables[0][2], [0.0, 0.0])
    self.assertAllEqual(sharded.variables[1][1], [0.0, 0.0])


def _sharding_creator(partitioner):
  """A variable creator that splits the variables `partitioner` shards, as PS does."""

  def creator(next_creator, **kwargs):
    initial_value = kwargs["initial_value"]
    value = tf.convert_to_tensor(
        initial_value() if callable(initial_value) else initial_value,
        dtype=kwargs.get("dtype"))
    kwargs = dict(kwargs, initial_value=value, shape=None)
    if value.shape.rank == 0:  # ParameterServerStrategy never shards a scalar.
      return next_creator(**kwargs)
    num_shards = partitioner(value.shape, value.dtype)[0]
    if num_shards == 1:
      return next_creator(**kwargs)
    shards = []
    for index, rows in enumerate(np.array_split(np.arange(value.shape[0]), num_shards)):
      shards.append(next_creator(**dict(kwargs, initial_value=value[rows[0]:rows[-1] + 1],
                                        name=f"{kwargs['name']}/part_{index}")))
    return tf.__internal__.distribute.ShardedVariable(shards)

  return creator


class ShardedModelTest(tf.test.TestCase, parameterized.TestCase):
  """The whole model with tables in two shards, in one process, against no shards."""

  @parameterized.named_parameters(("per_domain_adagrad", "per_domain"),
                                  ("adam_everything", "adam"))
  def test_train_steps_match_unsharded(self, embedding_optimizer):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    paths = synthetic.write_dataset(os.path.join(root, "data"), "tfrecord")
    feature_config = training.features_lib.load(paths["feature_config"])
    config = training.TrainConfig(model_dir=root, feature_config=paths["feature_config"],
                                  hidden_units=[8, 4], dropout=0.0,
                                  embedding_optimizer=embedding_optimizer)
    unsharded = training.build_model(config, feature_config)
    unsharded(training._example_batch(feature_config))  # pylint: disable=protected-access
    initial = training.make_checkpoint(unsharded).save(os.path.join(root, "initial"))

    partitioner = distribute.TablePartitioner(max_shards=2, min_shard_bytes=256)
    with tf.variable_creator_scope(_sharding_creator(partitioner)):
      sharded = training.build_model(config, feature_config)
      sharded(training._example_batch(feature_config))  # pylint: disable=protected-access
    self.assertTrue(distribute.is_sharded(sharded.embeddings.tables["item_id"]))
    self.assertFalse(distribute.is_sharded(sharded.embeddings.tables["age"]))
    # The unsharded initial weights restore into the shards.
    training.make_checkpoint(sharded).restore(initial).assert_existing_objects_matched()

    batches = input_lib.make_dataset(feature_config, [paths["train"]], 64, training=True,
                                     shuffle_buffer=256)
    for batch in batches.take(3):
      unsharded.train_step(batch)
      sharded.train_step(batch)
    trained = training.make_checkpoint(sharded).save(os.path.join(root, "sharded"))
    initial_item = tf.train.load_checkpoint(initial).get_tensor(
        "model/embeddings/table_item_id/.ATTRIBUTES/VARIABLE_VALUE")
    self.assertNotAllClose(unsharded.embeddings.tables["item_id"], initial_item)

    # The sharded checkpoint restores into a model without shards.
    restored = training.restore_model(config, feature_config, trained)
    self.assertLen(restored.weights, len(unsharded.weights))
    for actual, expected in zip(restored.weights, unsharded.weights):
      self.assertAllClose(actual.numpy(), expected.numpy(), rtol=1e-5, atol=1e-6,
                          msg=expected.name)


class TablePartitionerTest(tf.test.TestCase):

  def test_shards_only_tables(self):
    partitioner = distribute.TablePartitioner(max_shards=2, min_shard_bytes=256)
    shape = tf.TensorShape([64, 4])  # 1024 bytes
    self.assertEqual(partitioner(shape, tf.float32), [1, 1])
    with distribute.table_sharding():
      self.assertEqual(partitioner(shape, tf.float32), [2, 1])
      self.assertEqual(partitioner(tf.TensorShape([6, 4]), tf.float32), [1, 1])
    self.assertEqual(partitioner(shape, tf.float32), [1, 1])

  def test_invalid_arguments_raise(self):
    with self.assertRaisesRegex(ValueError, "max_shards"):
      distribute.TablePartitioner(max_shards=0)
    with self.assertRaisesRegex(ValueError, "min_shard_bytes"):
      distribute.TablePartitioner(max_shards=2, min_shard_bytes=0)


class StrategyConfigTest(tf.test.TestCase):

  def test_parameter_server_needs_cluster(self):
    with self.assertRaisesRegex(ValueError, "'chief', 'worker' and 'ps'"):
      distribute.make_strategy("parameter_server")

  def test_invalid_strategy_raises(self):
    config = training.TrainConfig(model_dir=self.get_temp_dir(), strategy="tpu")
    with self.assertRaisesRegex(ValueError, "strategy must be one of"):
      config.validate()
    config = training.TrainConfig(model_dir=self.get_temp_dir(),
                                  strategy="parameter_server", verbose=1)
    with self.assertRaisesRegex(ValueError, "verbose=2"):
      config.validate()

  def test_server_task_detection(self):
    worker = distribute.Task(type="worker", index=1, cluster=_CLUSTER)
    chief = distribute.Task(type="chief", index=0, cluster=_CLUSTER)
    self.assertTrue(distribute.is_server_task("parameter_server", worker))
    self.assertFalse(distribute.is_server_task("parameter_server", chief))
    self.assertFalse(distribute.is_server_task("multi_worker_mirrored", worker))


class EpochCheckpointRolesTest(tf.test.TestCase):

  def test_non_chief_writes_only_temp_dir(self):
    model_dir = tempfile.mkdtemp(dir=self.get_temp_dir())
    temp_dir = os.path.join(model_dir, "tmp_worker_1")
    variable = tf.Variable(1.0)
    checkpoint = tf.train.Checkpoint(value=variable)
    model = tf.keras.Sequential()
    chief = training.EpochCheckpoint(checkpoint, model_dir, patience=2)
    worker = training.EpochCheckpoint(checkpoint, model_dir, patience=2, temp_dir=temp_dir)
    for callback in (chief, worker):
      callback.set_model(model)

    worker.on_epoch_end(0, {"val_auc_mean": 0.5})
    self.assertFalse(os.path.exists(temp_dir))
    self.assertFalse(os.path.exists(os.path.join(model_dir, "checkpoints")))
    self.assertIsNone(worker.latest_checkpoint)

    chief.on_epoch_end(0, {"val_auc_mean": 0.5})
    worker.on_epoch_end(1, {"val_auc_mean": 0.6})
    # A non-chief task reads the chief's checkpoints and state.
    self.assertEqual(worker.latest_checkpoint, chief.manager.latest_checkpoint)
    self.assertEqual(worker.best_checkpoint, chief.best_manager.latest_checkpoint)
    self.assertEqual(worker.load_state()["epoch"], 1)
    self.assertFalse(os.path.exists(temp_dir))


# MirroredStrategy over two logical CPU devices against one device.

_MIRRORED_SCRIPT = """
import sys
import pepnet_tf
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
from pepnet_tf import training
paths, root = {paths!r}, {root!r}
for strategy in ("default", "mirrored"):
  training.train(training.TrainConfig(
      model_dir=f"{{root}}/{{strategy}}", feature_config=paths["feature_config"],
      train_files=[paths["train"]], valid_files=[paths["valid"]], test_files=[],
      batch_size=64, epochs=1, patience=10, hidden_units=[8, 4], dropout=0.0,
      strategy=strategy, export=False, verbose=0))
"""


class MirroredTest(tf.test.TestCase):

  def test_two_replicas_match_one_device(self):
    root = tempfile.mkdtemp(dir=self.get_temp_dir())
    paths = synthetic.write_dataset(os.path.join(root, "data"), "tfrecord")
    completed = subprocess.run(
        [sys.executable, "-c", _MIRRORED_SCRIPT.format(paths=paths, root=root)],
        env=_ENV, cwd=_REPO_ROOT, capture_output=True, text=True, timeout=400)
    self.assertEqual(completed.returncode, 0, completed.stderr[-3000:])

    with open(os.path.join(root, "mirrored", training.DISTRIBUTION_FILE)) as handle:
      self.assertEqual(json.load(handle)["num_replicas"], 2)
    single = _checkpoint_tensors(tf.train.latest_checkpoint(
        os.path.join(root, "default", "checkpoints")))
    mirrored = _checkpoint_tensors(tf.train.latest_checkpoint(
        os.path.join(root, "mirrored", "checkpoints")))
    self.assertCountEqual(mirrored, single)
    # Weights and optimizer states. Metric states differ by design: every replica
    # counts its own steps.
    single = {name: value for name, value in single.items()
              if "/loss_tracker/" not in name and "/task_metrics/" not in name}
    self.assertTrue(any("table_item_id" in name for name in single))
    self.assertTrue(any(name.startswith("embedding_optimizer/") for name in single))
    for name in single:
      self.assertAllClose(mirrored[name], single[name], atol=1e-5, rtol=0, msg=name)


if __name__ == "__main__":
  tf.test.main()
