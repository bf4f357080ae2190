"""Mapping from raw domain values to domain indices, shared by input and model."""

import tensorflow as tf

from pepnet_tf import features as features_lib

UNKNOWN_DOMAIN = -1


def domain_table(config: features_lib.FeatureConfig) -> tf.lookup.StaticHashTable:
  """Build a table from each value of `config.domain.values` to its index, -1 if unknown."""
  key_dtype = tf.string if config.domain_feature.dtype == "string" else tf.int64
  keys = tf.constant(config.domain.values, dtype=key_dtype)
  indices = tf.range(config.num_domains, dtype=tf.int32)
  return tf.lookup.StaticHashTable(
      tf.lookup.KeyValueTensorInitializer(keys, indices), default_value=UNKNOWN_DOMAIN)


def cast_domain_values(values: tf.Tensor, config: features_lib.FeatureConfig) -> tf.Tensor:
  """Cast raw domain values to the table's key dtype (int64 or string)."""
  if config.domain_feature.dtype == "string":
    return values if values.dtype == tf.string else tf.strings.as_string(values)
  return tf.cast(values, tf.int64)
