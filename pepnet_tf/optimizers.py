"""Embedding optimizers: one Adagrad per domain, or one shared Adagrad.

Embedding rows are touched rarely, so they learn with Adagrad and a large step
(0.05 in the published PEPNet setup), while dense layers use Adam with a small step.
With per-domain Adagrad every domain owns its accumulators and learning rate, and a
row's update from a batch is split by the domain of the samples that touched it.

Memory: per-domain mode keeps one accumulator per domain for every table, so the
optimizer state is `num_domains` times the table size; shared mode keeps one. For
very large tables shared mode is the affordable choice, at the cost of letting a busy
domain shrink the step size of rows that a quiet domain also uses.
"""

from typing import List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from pepnet_tf import distribute as distribute_lib

EMBEDDING_OPTIMIZERS = ("per_domain", "shared")

LearningRate = Union[float, tf.keras.optimizers.schedules.LearningRateSchedule]


class DomainAdagrad(tf.Module):
  """Adagrad for embedding tables, with per-domain or shared state.

  Args:
    num_domains: int, number of domains, at least 1.
    learning_rate: a float or `LearningRateSchedule` for every domain, or a list of
      `num_domains` of them. Defaults to 0.05.
    initial_accumulator_value: float, starting value of the accumulators.
    epsilon: float, added inside the square root for stability.
    shared: bool, one Adagrad for all domains instead of one per domain. A list of
      learning rates is then rejected.
    name: name of the module.

  Each sub-optimizer is a plain `tf.keras.optimizers.Adagrad`, so a Keras learning
  rate schedule works per domain, and `tf.train.Checkpoint` saves and restores the
  accumulators with the model.
  """

  def __init__(self,
               num_domains: int,
               learning_rate: Union[LearningRate, Sequence[LearningRate]] = 0.05,
               initial_accumulator_value: float = 0.1,
               epsilon: float = 1e-7,
               shared: bool = False,
               name: str = "domain_adagrad"):
    super().__init__(name=name)
    if not isinstance(num_domains, int) or num_domains < 1:
      raise ValueError(
          f"`num_domains` must be an integer >= 1. Received: num_domains={num_domains!r}")
    if isinstance(learning_rate, (list, tuple)):
      if shared:
        raise ValueError(
            "A list of learning rates needs shared=False: a shared Adagrad has one "
            f"learning rate. Received: learning_rate={learning_rate!r}")
      if len(learning_rate) != num_domains:
        raise ValueError(
            f"`learning_rate` must have one entry per domain ({num_domains}). "
            f"Received {len(learning_rate)}: {learning_rate!r}")
      rates = list(learning_rate)
    else:
      rates = [learning_rate] * (1 if shared else num_domains)
    self.num_domains = num_domains
    self.shared = bool(shared)
    self.optimizers = [
        tf.keras.optimizers.Adagrad(
            learning_rate=rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            name="adagrad_shared" if shared else f"adagrad_domain_{index}")
        for index, rate in enumerate(rates)
    ]

  def apply(self,
            tables: Sequence[tf.Variable],
            row_gradients: Sequence[tf.Tensor],
            row_ids: Sequence[tf.Tensor],
            row_domains: tf.Tensor) -> None:
    """Update `tables` from the gradients of the rows that a batch gathered.

    Args:
      tables: the embedding variables, `(table_size, embedding_dim)` each.
      row_gradients: for each table, `(batch_size, embedding_dim)`, the gradient of the
        loss with respect to the gathered rows.
      row_ids: for each table, `(batch_size,)` int row indices that were gathered.
      row_domains: `(batch_size,)` int32 domain index of every sample.
    """
    if not len(tables) == len(row_gradients) == len(row_ids):
      raise ValueError(
          "`tables`, `row_gradients` and `row_ids` must have the same length. "
          f"Received: {len(tables)}, {len(row_gradients)}, {len(row_ids)}")
    if self.shared:
      grads_and_vars = []
      for table, gradient, ids in zip(tables, row_gradients, row_ids):
        grads_and_vars.extend(split_row_gradients(table, gradient, ids)[0])
      self.optimizers[0].apply_gradients(grads_and_vars)
      return

    per_domain = [[] for _ in range(self.num_domains)]
    for table, gradient, ids in zip(tables, row_gradients, row_ids):
      parts = split_row_gradients(table, gradient, ids, row_domains, self.num_domains)
      for domain in range(self.num_domains):
        per_domain[domain].extend(parts[domain])
    for optimizer, grads_and_vars in zip(self.optimizers, per_domain):
      # Duplicate ids are summed by apply_gradients before the accumulator update.
      optimizer.apply_gradients(grads_and_vars)


def split_row_gradients(table, gradient: tf.Tensor, ids: tf.Tensor,
                        groups: Optional[tf.Tensor] = None,
                        num_groups: int = 1) -> List[List[Tuple[tf.IndexedSlices, tf.Variable]]]:
  """Split the gradient of gathered rows by group and by the shard that contains each row.

  A sharded table (`tf.distribute` `ShardedVariable`) gets one sparse gradient per
  shard, with ids counted from the shard's first row, so that optimizers update the
  shards themselves: an optimizer given the `ShardedVariable` as a whole fails.

  Args:
    table: the embedding variable `(table_size, embedding_dim)`, sharded or not.
    gradient: `(batch_size, embedding_dim)`, the gradient with respect to the rows.
    ids: `(batch_size,)` int row indices that were gathered.
    groups: `(batch_size,)` int group (domain) of every row, or None for one group.
    num_groups: number of groups; every value of `groups` is below it.

  Returns:
    For every group, a list of `(IndexedSlices, shard)` pairs, one per shard. A pair
    can hold no rows.
  """
  shards = distribute_lib.table_shards(table)
  if len(shards) == 1 and groups is None:
    return [[(_row_slices(gradient, ids, table), table)]]

  ids = tf.cast(ids, tf.int64)
  first_rows = tf.constant([first_row for _, first_row in shards], tf.int64)
  # (batch_size,): the shard of each id is the number of shards starting at or below it, minus 1.
  shard_index = tf.reduce_sum(
      tf.cast(ids[:, tf.newaxis] >= first_rows[tf.newaxis, 1:], tf.int32), axis=1)
  local_ids = ids - tf.gather(first_rows, shard_index)
  if groups is None:
    groups = tf.zeros_like(shard_index)
    num_groups = 1
  # One partition per (shard, group): (batch_size, embedding_dim) ->
  # num_shards * num_groups parts of (rows_of_part, embedding_dim).
  partition = shard_index * num_groups + tf.cast(groups, tf.int32)
  num_parts = len(shards) * num_groups
  gradient_parts = tf.dynamic_partition(gradient, partition, num_parts)
  id_parts = tf.dynamic_partition(local_ids, partition, num_parts)
  result = [[] for _ in range(num_groups)]
  for shard_number, (shard, _) in enumerate(shards):
    for group in range(num_groups):
      part = shard_number * num_groups + group
      result[group].append(
          (_row_slices(gradient_parts[part], id_parts[part], shard), shard))
  return result


def _row_slices(gradient, ids, table) -> tf.IndexedSlices:
  return tf.IndexedSlices(values=gradient, indices=ids, dense_shape=tf.shape(table))
