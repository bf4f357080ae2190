"""Feature lookups and embedding tables.

Lookups (vocabulary, hashing, bucketizing) live in the model so that an exported
model takes raw values. Lookup and row gathering are separate steps. The training
step gathers the rows outside the gradient tape and takes the gradient with respect
to the gathered rows. That gradient lines up with the samples, so it can be split
by domain (see `pepnet_tf.optimizers.DomainAdagrad`).
"""

from typing import Dict, List, Mapping

import tensorflow as tf

from pepnet_tf import distribute as distribute_lib
from pepnet_tf import domains
from pepnet_tf import features as features_lib
from pepnet_tf.layers._initializers import clone_initializer


@tf.keras.utils.register_keras_serializable(package="pepnet_tf")
class FeatureEmbeddings(tf.keras.layers.Layer):
  """Turns raw feature values into embedding rows, one table per feature.

  The domain feature is mapped to its domain index (see `domain_index`) and, when
  `config.domain.embed` is true, also gets a `(num_domains, embedding_dim)` table
  whose row is the sample's domain.

  Args:
    config: the dataset's FeatureConfig; every feature of groups "general",
      "domain_side" and "prior" gets a lookup and a table.
    embeddings_initializer: initializer of the tables. Defaults to uniform in
      [-0.05, 0.05], as `tf.keras.layers.Embedding`.
    **kwargs: base `tf.keras.layers.Layer` arguments.

  Call arguments:
    features: dict from feature name to a `(batch_size,)` tensor of raw values.

  Returns:
    A dict from feature name to `(batch_size, embedding_dim)` rows.
  """

  def __init__(self, config: features_lib.FeatureConfig,
               embeddings_initializer="uniform", **kwargs):
    super().__init__(**kwargs)
    self.config = config
    self.embeddings_initializer = tf.keras.initializers.get(embeddings_initializer)
    self.specs = [spec for spec in config.features if spec.is_embedded]
    pending = [spec.name for spec in self.specs if spec.needs_admission]
    if pending:
      raise features_lib.FeatureConfigError(
          f"Features {pending} admit their vocabulary from training counts, and the "
          "config holds no admitted vocabulary yet. Resolve it first with "
          "`pepnet_tf.admission.admit_vocabularies`, as the trainer does.")
    self.lookups = {spec.name: _make_lookup(config, spec) for spec in self.specs}
    self.table_sizes = table_sizes(config)
    self.domain_name = config.domain.feature
    self.domain_lookup = domains.domain_table(config)
    fallback = config.domain.fallback
    self.fallback_index = None if fallback is None else config.domain.values.index(fallback)
    self.tables = {}

  def build(self, input_shape=None):
    widths = {spec.name: self.config.embedding_dim_of(spec) for spec in self.specs}
    widths[self.domain_name] = self.config.embedding_dim
    for name in self.table_sizes:
      # Under ParameterServerStrategy with a `distribute.TablePartitioner`, a table can
      # become a `ShardedVariable`: consecutive row ranges on different servers.
      with distribute_lib.table_sharding():
        self.tables[name] = self.add_weight(
            name=f"table_{name}",
            shape=(self.table_sizes[name], widths[name]),
            initializer=clone_initializer(self.embeddings_initializer),
            trainable=True)
    super().build(input_shape)

  @property
  def table_names(self) -> List[str]:
    return list(self.table_sizes)

  @property
  def lookup_order(self) -> List[str]:
    """Table names in the order of `lookup`'s result: the domain first, if embedded."""
    names = [self.domain_name] if self.domain_name in self.table_sizes else []
    return names + [spec.name for spec in self.specs]

  @property
  def table_variables(self) -> List[tf.Variable]:
    if not self.built:
      self.build()
    return [self.tables[name] for name in self.table_names]

  def domain_index(self, features: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Map the raw domain column to `(batch_size,)` int32 domain indices.

    A value outside the config's domain values takes the fallback domain if the config
    names one, and otherwise fails with InvalidArgumentError naming the values.
    """
    if self.domain_name not in features:
      raise ValueError(
          f"Input feature {self.domain_name!r} (the domain) is missing. "
          f"Received features: {sorted(features)}")
    raw = _as_column(features[self.domain_name])
    index = self.domain_lookup.lookup(domains.cast_domain_values(raw, self.config))
    unknown = tf.equal(index, domains.UNKNOWN_DOMAIN)
    if self.fallback_index is not None:
      return tf.where(unknown, tf.constant(self.fallback_index, tf.int32), index)
    check = tf.debugging.Assert(
        tf.logical_not(tf.reduce_any(unknown)),
        [f"Unknown value of domain feature {self.domain_name!r} (known: "
         f"{self.config.domain.values}); unknown values:", tf.boolean_mask(raw, unknown)],
        summarize=20)
    with tf.control_dependencies([check]):
      return tf.identity(index)

  def lookup(self, features: Mapping[str, tf.Tensor],
             domain_index: tf.Tensor = None) -> Dict[str, tf.Tensor]:
    """Map raw values to row indices: feature name -> `(batch_size,)` int64 ids.

    `domain_index`, when given, saves mapping the domain column a second time.
    """
    ids = {}
    if self.domain_name in self.table_sizes:
      if domain_index is None:
        domain_index = self.domain_index(features)
      ids[self.domain_name] = tf.cast(domain_index, tf.int64)
    for spec in self.specs:
      if spec.name not in features:
        raise ValueError(
            f"Input feature {spec.name!r} is missing. Received features: {sorted(features)}")
      values = _as_column(features[spec.name])
      if spec.encoding == "buckets":
        values = tf.cast(values, tf.float32)
      elif spec.dtype == "string" and values.dtype != tf.string:
        values = tf.strings.as_string(values)
      elif spec.dtype == "int64" and values.dtype != tf.int64:
        values = tf.cast(values, tf.int64)
      ids[spec.name] = tf.cast(self.lookups[spec.name](values), tf.int64)
    return ids

  def gather(self, ids: Mapping[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    """Read the rows of `ids`: feature name -> `(batch_size, embedding_dim)`."""
    if not self.built:
      self.build()
    # embedding_lookup reads only the shards that hold the ids of a sharded table, and
    # is a plain gather on an unsharded one.
    return {name: tf.nn.embedding_lookup(self.tables[name], row_ids)
            for name, row_ids in ids.items()}

  def call(self, features):
    return self.gather(self.lookup(features))

  def get_config(self):
    config = super().get_config()
    config.update({
        "config": self.config.to_dict(),
        "embeddings_initializer": tf.keras.initializers.serialize(
            self.embeddings_initializer),
    })
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["config"] = features_lib.from_dict(config["config"])
    return cls(**config)


def table_sizes(config: features_lib.FeatureConfig) -> Dict[str, int]:
  """Rows of every embedding table of `config`: feature name -> rows.

  The domain's table, when `config.domain.embed` is true, comes last.
  """
  sizes = {spec.name: _table_size(config, spec)
           for spec in config.features if spec.is_embedded}
  if config.domain.embed:
    sizes[config.domain.feature] = config.num_domains
  return sizes


def _as_column(values: tf.Tensor) -> tf.Tensor:
  """Accept `(batch_size,)` or `(batch_size, 1)` and return `(batch_size,)`."""
  values = tf.convert_to_tensor(values)
  if values.shape.rank == 2 and values.shape[-1] == 1:
    return tf.squeeze(values, axis=-1)
  return values


def _make_lookup(config: features_lib.FeatureConfig, spec: features_lib.FeatureSpec):
  name = f"lookup_{spec.name}"
  if spec.encoding == "vocabulary":
    vocabulary = config.vocabulary_of(spec)
    if spec.dtype == "string":
      return tf.keras.layers.StringLookup(
          vocabulary=[str(value) for value in vocabulary],
          num_oov_indices=spec.num_oov_buckets, mask_token=None, name=name)
    return tf.keras.layers.IntegerLookup(
        vocabulary=tf.constant(vocabulary, dtype=tf.int64),
        num_oov_indices=spec.num_oov_buckets, mask_token=None, name=name)
  if spec.encoding == "hash":
    return tf.keras.layers.Hashing(num_bins=spec.hash_buckets, name=name)
  return tf.keras.layers.Discretization(bin_boundaries=list(spec.boundaries), name=name)


def _table_size(config: features_lib.FeatureConfig, spec: features_lib.FeatureSpec) -> int:
  if spec.encoding == "vocabulary":
    return len(config.vocabulary_of(spec)) + spec.num_oov_buckets
  if spec.encoding == "hash":
    return spec.hash_buckets
  return len(spec.boundaries) + 1
