"""Domain heads: one output unit per (domain, task), chosen per sample."""

from typing import Any, Dict, Mapping, Sequence

import tensorflow as tf

from pepnet_tf.layers._initializers import clone_initializer
from pepnet_tf.layers.ppnet import validate_task_names


@tf.keras.utils.register_keras_serializable(package="pepnet_tf")
class DomainHeads(tf.keras.layers.Layer):
  """Per-domain output units for every task.

  Every `(domain, task)` pair owns a linear output unit. A sample's logit for task
  `t` comes from its own domain's unit only:

      logit_t = w_(domain, t) · H_t + b_(domain, t)

  The layer gathers each sample's head weights by its domain index, so it computes
  one dot product per sample and task instead of `num_domains` of them, and a head
  receives exactly zero gradient from samples of other domains.

  Example:

  >>> heads = DomainHeads(num_domains=3, task_names=["click"])
  >>> hidden = {"click": tf.ones((4, 8))}  # task -> (batch_size, hidden_dim)
  >>> logits = heads(hidden, tf.constant([0, 2, 1, 2]))
  >>> logits["click"].shape
  TensorShape([4])

  Args:
    num_domains: int, number of domains, at least 1.
    task_names: list of str, one head per task and domain, unique and non-empty.
    kernel_initializer: initializer of the head kernels. Defaults to "glorot_uniform".
    bias_initializer: initializer of the head biases. Defaults to "zeros".
    kernel_regularizer: optional regularizer of the head kernels.
    bias_regularizer: optional regularizer of the head biases.
    **kwargs: base `tf.keras.layers.Layer` arguments.

  Call arguments:
    inputs: dict from task name to a `(batch_size, hidden_dim)` tensor, one entry
      per task in `task_names`.
    domain_index: int `(batch_size,)` tensor with values in `[0, num_domains)`.

  Returns:
    A dict from task name to `(batch_size,)` logits.
  """

  def __init__(self,
               num_domains: int,
               task_names: Sequence[str],
               kernel_initializer: Any = "glorot_uniform",
               bias_initializer: Any = "zeros",
               kernel_regularizer: Any = None,
               bias_regularizer: Any = None,
               **kwargs):
    super().__init__(**kwargs)
    if not isinstance(num_domains, int) or num_domains < 1:
      raise ValueError(
          f"`num_domains` must be an integer >= 1. Received: num_domains={num_domains!r}")
    self.num_domains = num_domains
    self.task_names = validate_task_names(task_names)
    self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
    self.bias_initializer = tf.keras.initializers.get(bias_initializer)
    self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)
    self.kernels = {}
    self.biases = {}

  def build(self, input_shape):
    if not isinstance(input_shape, Mapping):
      raise ValueError(
          "DomainHeads expects a dict from task name to `(batch_size, hidden_dim)`. "
          f"Received: input shape={input_shape!r}")
    missing = [name for name in self.task_names if name not in input_shape]
    if missing:
      raise ValueError(
          f"DomainHeads inputs are missing tasks {missing}. "
          f"Received tasks: {sorted(input_shape)}")
    for name in self.task_names:
      shape = tf.TensorShape(input_shape[name])
      if shape.rank != 2 or shape[-1] is None:
        raise ValueError(
            f"DomainHeads input for task {name!r} must be 2-D `(batch_size, hidden_dim)` "
            f"with a known width. Received: shape={shape}")
      self.kernels[name] = self.add_weight(
          name=f"kernel_{name}",
          shape=(self.num_domains, shape[-1]),
          initializer=clone_initializer(self.kernel_initializer),
          regularizer=self.kernel_regularizer)
      self.biases[name] = self.add_weight(
          name=f"bias_{name}",
          shape=(self.num_domains,),
          initializer=clone_initializer(self.bias_initializer),
          regularizer=self.bias_regularizer)
    super().build(input_shape)

  def call(self, inputs: Mapping[str, tf.Tensor], domain_index) -> Dict[str, tf.Tensor]:
    domain_index = tf.convert_to_tensor(domain_index)
    if domain_index.shape.rank == 2 and domain_index.shape[-1] == 1:
      domain_index = tf.squeeze(domain_index, axis=-1)
    if domain_index.shape.rank != 1:
      raise ValueError(
          "`domain_index` must be 1-D `(batch_size,)`. "
          f"Received: shape={domain_index.shape}")
    if not domain_index.dtype.is_integer:
      raise ValueError(
          f"`domain_index` must be an integer tensor. Received: dtype={domain_index.dtype}")

    logits = {}
    for name in self.task_names:
      # (num_domains, hidden_dim) gathered -> (batch_size, hidden_dim)
      kernel = tf.gather(self.kernels[name], domain_index)
      # (num_domains,) gathered -> (batch_size,)
      bias = tf.gather(self.biases[name], domain_index)
      # (batch_size, hidden_dim) · (batch_size, hidden_dim) -> (batch_size,)
      logits[name] = tf.reduce_sum(inputs[name] * kernel, axis=-1) + bias
    return logits

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_domains": self.num_domains,
        "task_names": list(self.task_names),
        "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
        "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
        "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
    })
    return config
