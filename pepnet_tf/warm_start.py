"""Warm start of a new training pass from the previous pass's model.

Between passes the vocabularies change (see `pepnet_tf.admission`): ids are admitted
and evicted, and the rows of the ids that stay over move to new positions. A warm
start therefore copies, from the previous model into a freshly built one:

- every dense weight, and the dense optimizer's state (Adam moments, step count);
- the tables of hashed and bucketized features and of the domain, row for row;
- for a vocabulary feature, the row of every id that both vocabularies hold, and the
  OOV rows when the number of OOV buckets is unchanged (the same values hash to
  the same bucket). New ids keep the fresh model's initial row; evicted ids have no
  row any more and map to an OOV bucket;
- the embedding optimizer's state of those rows the same way: every domain's
  Adagrad accumulator of a carried id, while a new id starts at the initial
  accumulator value.

Rows move with `tf.keras.utils.warmstart_embedding_matrix`, given the fresh table
(or accumulator) as the initializer of new ids. What it does not cover is written
here: matching optimizer slots to their variables, the dense weights, and the OOV
rows, which carry no vocabulary term of their own.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from pepnet_tf import distribute as distribute_lib
from pepnet_tf import features as features_lib


class IncompatibleModelError(ValueError):
  """Raised when the previous pass's model cannot seed the new one."""


def build_optimizer_state(model) -> List[Tuple[Any, List[tf.Variable]]]:
  """Create every optimizer slot of `model` now, in the order training creates them.

  Keras optimizers number their slots by the order of the variables they are first
  built with, and checkpoints store slots by that number. Building them here with
  the variable order of `PEPNet.train_step` keeps a checkpoint written from this
  model interchangeable with one written during training.

  Returns:
    `(optimizer, variables)` pairs: each optimizer and the variables it was built on.
  """
  tables = [model.embeddings.tables[name] for name in model.embeddings.lookup_order]
  shards = [shard for table in tables for shard, _ in distribute_lib.table_shards(table)]
  dense = model.dense_variables
  if model.embedding_optimizer is None:
    model.optimizer.build(dense + shards)
    return [(model.optimizer, dense + shards)]
  model.optimizer.build(dense)
  built = [(model.optimizer, dense)]
  for optimizer in model.embedding_optimizer.optimizers:
    optimizer.build(shards)
    built.append((optimizer, shards))
  return built


def row_keys(spec: features_lib.FeatureSpec, vocabulary: Sequence[Any]) -> List[Any]:
  """Return one key per table row of a vocabulary feature, OOV rows first.

  An OOV row's key names the bucket count, so OOV rows are carried only between
  tables that hash into the same number of buckets.
  """
  buckets = spec.num_oov_buckets
  return [("oov", buckets, index) for index in range(buckets)] + [
      ("id", value) for value in vocabulary]


def check_feature_configs(previous: features_lib.FeatureConfig,
                          config: features_lib.FeatureConfig) -> None:
  """Raise IncompatibleModelError unless only vocabularies differ between the configs."""
  problems = []
  old_names = [spec.name for spec in previous.features]
  new_names = [spec.name for spec in config.features]
  if old_names != new_names:
    problems.append(f"features {old_names} became {new_names}")
  else:
    for old, new in zip(previous.features, config.features):
      for field in ("group", "dtype", "hash_buckets", "boundaries"):
        if getattr(old, field) != getattr(new, field):
          problems.append(f"{new.name}.{field} {getattr(old, field)!r} became "
                          f"{getattr(new, field)!r}")
      if old.encoding != new.encoding:
        problems.append(f"{new.name} encoding {old.encoding!r} became {new.encoding!r}")
      if previous.embedding_dim_of(old) != config.embedding_dim_of(new):
        problems.append(f"{new.name} embedding_dim {previous.embedding_dim_of(old)} became "
                        f"{config.embedding_dim_of(new)}")
  for field in ("values", "embed", "feature"):
    if getattr(previous.domain, field) != getattr(config.domain, field):
      problems.append(f"domain.{field} {getattr(previous.domain, field)!r} became "
                      f"{getattr(config.domain, field)!r}")
  if problems:
    raise IncompatibleModelError(
        "The previous model cannot warm-start this one; only vocabularies may change "
        "between passes. Differences: " + "; ".join(problems))


def warm_start(model, config: features_lib.FeatureConfig, previous_model,
               previous_config: features_lib.FeatureConfig) -> Dict[str, Dict[str, int]]:
  """Copy the weights and optimizer state of `previous_model` into `model`.

  Both models must be built (called once), unsharded, with the same architecture.
  `previous_model` must already contain the previous pass's checkpoint, optimizer
  slots included: build them with `build_optimizer_state` before restoring.
  `model` is overwritten except for the rows of new ids, which keep their initial
  values.

  Returns:
    For every vocabulary feature: `carried_rows` (rows copied, OOV rows included)
    and `new_rows` (rows left at their initial value).
  """
  check_feature_configs(previous_config, config)
  built = build_optimizer_state(model)
  previous_built = build_optimizer_state(previous_model)

  keys = {}
  stats = {}
  for spec in config.features:
    if spec.is_embedded and spec.encoding == "vocabulary":
      old_spec = previous_config.feature(spec.name)
      old_keys = row_keys(old_spec, previous_config.vocabulary_of(old_spec))
      new_keys = row_keys(spec, config.vocabulary_of(spec))
      keys[spec.name] = (old_keys, new_keys)
      carried = len(set(old_keys) & set(new_keys))
      stats[spec.name] = {"carried_rows": carried, "new_rows": len(new_keys) - carried}

  table_of = {model.embeddings.tables[name].ref(): name for name in model.embeddings.tables}
  pairs = [(previous_model.embeddings.tables[name], model.embeddings.tables[name])
           for name in model.embeddings.tables]
  previous_dense, dense = previous_model.dense_variables, model.dense_variables
  if len(previous_dense) != len(dense):
    raise IncompatibleModelError(
        f"The previous model has {len(previous_dense)} dense weights and this one "
        f"{len(dense)}: the architectures differ.")
  pairs += list(zip(previous_dense, dense))

  slot_pairs = []
  for (old_optimizer, old_variables), (new_optimizer, new_variables) in zip(
      previous_built, built):
    new_optimizer.iterations.assign(old_optimizer.iterations)
    old_slots = _slots_by_variable(old_optimizer, old_variables)
    new_slots = _slots_by_variable(new_optimizer, new_variables)
    for variable, old_variable in zip(new_variables, old_variables):
      for old_slot, new_slot in zip(old_slots[old_variable.ref()], new_slots[variable.ref()]):
        slot_pairs.append((old_slot, new_slot, table_of.get(variable.ref())))

  for old, new in pairs:
    _copy(old, new, keys.get(table_of.get(new.ref())), new.name)
  for old_slot, new_slot, table in slot_pairs:
    _copy(old_slot, new_slot, keys.get(table), new_slot.name)
  return stats


def _slots_by_variable(optimizer, variables: Sequence[tf.Variable]
                       ) -> Dict[Any, List[tf.Variable]]:
  """Map each variable's ref to its optimizer slots.

  After the step counter, Keras optimizers create the slots of each variable
  together, in the order of the variables: `m` and `v` for Adam, `accumulator` for
  Adagrad.
  """
  slots = list(optimizer.variables)[1:]
  if not variables:
    return {}
  per_variable, remainder = divmod(len(slots), len(variables))
  if remainder:
    raise IncompatibleModelError(
        f"Optimizer {optimizer.name} has {len(slots)} slots for {len(variables)} "
        "variables; warm start supports optimizers with the same slots for every variable.")
  result = {}
  for index, variable in enumerate(variables):
    own = slots[index * per_variable:(index + 1) * per_variable]
    for slot in own:
      if not slot.name.endswith(variable.name) or slot.shape != variable.shape:
        raise IncompatibleModelError(
            f"Optimizer slot {slot.name} {slot.shape} does not belong to variable "
            f"{variable.name} {variable.shape}; warm start cannot match the slots of "
            f"optimizer {optimizer.name}.")
    result[variable.ref()] = own
  return result


def _copy(old: tf.Variable, new: tf.Variable,
          keys: Optional[Tuple[List[Any], List[Any]]], name: str) -> None:
  if keys is None:
    if old.shape != new.shape:
      raise IncompatibleModelError(
          f"{name} has shape {old.shape} in the previous model and {new.shape} now.")
    new.assign(old)
    return
  old_keys, new_keys = keys
  fresh = new.numpy()
  value = tf.keras.utils.warmstart_embedding_matrix(
      base_vocabulary=old_keys, new_vocabulary=new_keys, base_embeddings=old.numpy(),
      new_embeddings_initializer=tf.keras.initializers.Constant(fresh))
  new.assign(np.asarray(value, dtype=fresh.dtype))
