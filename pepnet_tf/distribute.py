"""Distribution strategies for training: cluster roles, strategy choice, table sharding.

Strategies (`TrainConfig.strategy`, `trainers.train --strategy`):

- "default": no distribution, one device.
- "mirrored": synchronous all-reduce over the local GPUs, or over the logical CPU
  devices when there is no GPU.
- "multi_worker_mirrored": synchronous all-reduce over every task of the cluster in
  `TF_CONFIG` (tasks "chief" and "worker"). Every task runs the trainer.
- "parameter_server": asynchronous training. The "chief" task runs the trainer
  (the Keras coordinator), the "worker" tasks run the training steps it schedules,
  and the "ps" tasks hold the variables. Workers and parameter servers run the same
  trainer command, which starts a `tf.distribute.Server` and blocks.

The cluster comes from the `TF_CONFIG` environment variable, read by
`tf.distribute.cluster_resolver.TFConfigClusterResolver`:

    {"cluster": {"chief": ["host0:2222"], "worker": ["host1:2222", "host2:2222"],
                 "ps": ["host3:2222", "host4:2222"]},
     "task": {"type": "worker", "index": 1}}

Under "parameter_server", embedding tables are sharded across the parameter servers
by `TablePartitioner`: a table gets up to `max_shards` shards (default: one per
parameter server) and at least `min_shard_bytes` bytes per shard. Every other
variable (dense layers, optimizer slots, metrics) stays whole and is placed on one
parameter server, round robin.
"""

import contextlib
import dataclasses
import json
import os
import threading
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker_mirrored", "parameter_server")
# TensorFlow's MinSizePartitioner default: 256 KiB.
DEFAULT_MIN_SHARD_BYTES = 256 << 10
_SERVER_TASK_TYPES = ("worker", "ps")


@dataclasses.dataclass(frozen=True)
class Task:
  """This process's place in the cluster that `TF_CONFIG` describes.

  Attributes:
    type: "chief", "worker", "ps", or None when `TF_CONFIG` names no task.
    index: index of the task within its type.
    cluster: job name to the list of task addresses; empty without `TF_CONFIG`.
    rpc_layer: the RPC protocol, "grpc" unless `TF_CONFIG` names another.
  """

  type: Optional[str]
  index: int
  cluster: Mapping[str, Sequence[str]]
  rpc_layer: str = "grpc"

  @property
  def name(self) -> str:
    return f"{self.type}_{self.index}" if self.type else "local"


# The task of a process that runs without a cluster.
LOCAL_TASK = Task(type=None, index=0, cluster={})


def current_task() -> Task:
  """Read this process's task and cluster from `TF_CONFIG`."""
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  cluster = resolver.cluster_spec().as_dict()
  return Task(type=resolver.task_type, index=int(resolver.task_id or 0),
              cluster={job: _addresses(tasks) for job, tasks in cluster.items()},
              rpc_layer=resolver.rpc_layer or "grpc")


def _addresses(tasks) -> List[str]:
  # A ClusterSpec job is a list of addresses, or a dict from task index to address.
  if isinstance(tasks, dict):
    return [tasks[index] for index in sorted(tasks)]
  return list(tasks)


def is_server_task(strategy: str, task: Task) -> bool:
  """Return whether this task only serves a parameter-server cluster (a worker or a ps)."""
  return strategy == "parameter_server" and task.type in _SERVER_TASK_TYPES


def run_server(task: Task) -> None:
  """Start the gRPC server of a parameter-server worker or ps task and block forever.

  The coordinator (the chief) sends this server the steps to run (a worker) or the
  variables to hold (a ps). The process runs until it is killed.
  """
  _check_parameter_server_cluster(task)
  server = tf.distribute.Server(
      tf.train.ClusterSpec(dict(task.cluster)), job_name=task.type,
      task_index=task.index, protocol=task.rpc_layer, start=True)
  logging.info("Started the %s server of task %s at %s", task.rpc_layer, task.name,
               server.target)
  server.join()


def make_strategy(name: str, ps_shards: Optional[int] = None,
                  min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES) -> tf.distribute.Strategy:
  """Create the `tf.distribute.Strategy` called `name`, with the cluster of `TF_CONFIG`.

  Create it before any other TensorFlow work in the process. A multi-worker strategy
  configures collective ops, which TensorFlow expects at program startup.

  Args:
    name: one of `STRATEGIES`.
    ps_shards: maximum number of shards of an embedding table under
      "parameter_server"; None uses the number of ps tasks.
    min_shard_bytes: minimum size of a table shard in bytes under "parameter_server".

  Raises:
    ValueError: for an unknown name, or a `TF_CONFIG` that does not fit the strategy.
  """
  if name not in STRATEGIES:
    raise ValueError(f"strategy must be one of {STRATEGIES}. Received: {name!r}")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    return tf.distribute.MirroredStrategy([device.name for device in devices])

  task = current_task()
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  if name == "multi_worker_mirrored":
    if "ps" in task.cluster:
      raise ValueError(
          "strategy 'multi_worker_mirrored' takes a cluster of 'chief' and 'worker' "
          f"tasks, but TF_CONFIG also names 'ps' tasks: {dict(task.cluster)}. Use "
          "strategy 'parameter_server' for a cluster with parameter servers.")
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)

  _check_parameter_server_cluster(task)
  if task.type != "chief":
    raise ValueError(
        "Under strategy 'parameter_server' only the 'chief' task creates the strategy; "
        f"this is task {task.name}. Worker and ps tasks call run_server.")
  num_ps = len(task.cluster["ps"])
  partitioner = TablePartitioner(ps_shards or num_ps, min_shard_bytes)
  return tf.distribute.experimental.ParameterServerStrategy(
      resolver, variable_partitioner=partitioner)


def _check_parameter_server_cluster(task: Task) -> None:
  missing = [job for job in ("chief", "worker", "ps") if not task.cluster.get(job)]
  if missing:
    raise ValueError(
        "strategy 'parameter_server' needs TF_CONFIG with a cluster of 'chief', "
        f"'worker' and 'ps' tasks; jobs {missing} are missing. "
        f"Received cluster: {dict(task.cluster)}")
  if task.type not in ("chief",) + _SERVER_TASK_TYPES:
    raise ValueError(
        "Under strategy 'parameter_server' the TF_CONFIG task type must be 'chief', "
        f"'worker' or 'ps'. Received: {task.type!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Return whether this task writes checkpoints, logs and exports (only one task does)."""
  return bool(strategy.extended.should_checkpoint)


def task_temp_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
  """Return the directory where a non-chief task writes checkpoints and then deletes them.

  Under multi-worker mirrored training every task must take part in saving, because
  reading some variables (metrics) needs all tasks. Only the chief's files count.
  """
  resolver = getattr(strategy, "cluster_resolver", None)
  task_type = getattr(resolver, "task_type", None) or "worker"
  task_id = getattr(resolver, "task_id", None) or 0
  return os.path.join(model_dir, f"tmp_{task_type}_{task_id}")


# Embedding table sharding.

_table_scope = threading.local()


@contextlib.contextmanager
def table_sharding():
  """Mark the variables created inside as embedding tables, which `TablePartitioner` shards."""
  previous = getattr(_table_scope, "active", False)
  _table_scope.active = True
  try:
    yield
  finally:
    _table_scope.active = previous


class TablePartitioner(tf.distribute.experimental.partitioners.Partitioner):
  """Variable partitioner that shards embedding tables only.

  Inside `table_sharding()` it splits the first axis like
  `tf.distribute.experimental.partitioners.MinSizePartitioner`: as many shards as
  possible, at most `max_shards`, each at least `min_shard_bytes`. Outside it returns
  one partition, so dense weights stay whole.

  Args:
    max_shards: int >= 1, maximum number of shards of a table.
    min_shard_bytes: int >= 1, minimum bytes of a shard. A table smaller than twice
      this stays whole.
  """

  def __init__(self, max_shards: int, min_shard_bytes: int = DEFAULT_MIN_SHARD_BYTES):
    if not isinstance(max_shards, int) or max_shards < 1:
      raise ValueError(f"`max_shards` must be an integer >= 1. Received: {max_shards!r}")
    if not isinstance(min_shard_bytes, int) or min_shard_bytes < 1:
      raise ValueError(
          f"`min_shard_bytes` must be an integer >= 1. Received: {min_shard_bytes!r}")
    self.max_shards = max_shards
    self.min_shard_bytes = min_shard_bytes
    self._partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=min_shard_bytes, max_shards=max_shards)

  def __call__(self, shape, dtype, axis=0):
    if not getattr(_table_scope, "active", False):
      return [1] * len(shape)
    return self._partitioner(shape, dtype, axis=axis)


def is_sharded(table: Any) -> bool:
  return isinstance(table, tf.__internal__.distribute.ShardedVariable)


def table_shards(table: Any) -> List[Tuple[tf.Variable, int]]:
  """Return `(shard, first_row)` for every shard of `table`, in row order.

  A `ShardedVariable` stores consecutive row ranges, one per shard. A plain variable
  is its own single shard starting at row 0.
  """
  if not is_sharded(table):
    return [(table, 0)]
  shards, first_row = [], 0
  for shard in table.variables:
    shards.append((shard, first_row))
    first_row += int(shard.shape[0])
  return shards


def describe_tables(tables: Mapping[str, Any]) -> Dict[str, Any]:
  """Return every table's shape, whether it is a ShardedVariable, and its shards.

  Each shard is `{"first_row", "rows", "device"}`; an unsharded table is one shard.
  """
  description = {}
  for name, table in tables.items():
    description[name] = {
        "shape": table.shape.as_list(),
        "sharded": is_sharded(table),
        "shards": [{"first_row": first_row, "rows": int(shard.shape[0]),
                    "device": shard.device}
                   for shard, first_row in table_shards(table)],
    }
  return description


def write_description(path: str, strategy_name: str, strategy: tf.distribute.Strategy,
                      task: Task, tables: Mapping[str, Any]) -> None:
  """Write the strategy, its replica count, the cluster and the table placement to `path`.

  The file is JSON: `{"strategy", "num_replicas", "cluster", "tables"}`, with
  `tables` as `describe_tables` returns it.
  """
  payload = {"strategy": strategy_name,
             "num_replicas": strategy.num_replicas_in_sync,
             "cluster": {job: list(addresses) for job, addresses in task.cluster.items()},
             "tables": describe_tables(tables)}
  with tf.io.gfile.GFile(path, "w") as handle:
    json.dump(payload, handle, indent=2, sort_keys=True)
    handle.write("\n")
