"""EPNet: domain-aware scaling of the general embeddings."""

from typing import Any, Optional

import tensorflow as tf

from pepnet_tf.layers import _shapes
from pepnet_tf.layers.gate_nu import GateNU

_MODES = ("element", "field")


@tf.keras.utils.register_keras_serializable(package="pepnet_tf")
class EPNet(tf.keras.layers.Layer):
  """Embedding Personalized Network (EPNet) of PEPNet.

  Scales the general embeddings `E` with a gate that reads the domain-side features:

      delta_domain = GateNU(E_d ⊕ stop_gradient(E))
      O_ep = delta_domain ⊙ E

  `E` gets no gradient through the gate, so the gate judges the embeddings without
  reshaping them to please itself. The domain-side embeddings `E_d` do learn through
  the gate. In "element" mode the gate has one value per embedding unit; in "field"
  mode one value per feature field, broadcast over that field's `embedding_dim` units,
  which needs 3-D general embeddings and far fewer gate outputs. From "PEPNet:
  Parameter and Embedding Personalized Network for Infusing with Personalized Prior
  Information" (Chang et al., KDD 2023).

  Example:

  >>> epnet = EPNet(mode="field")
  >>> general = tf.ones((2, 5, 4))   # batch_size, num_fields, embedding_dim
  >>> domain_side = tf.ones((2, 8))  # batch_size, domain_width
  >>> epnet(general, domain_side).shape
  TensorShape([2, 5, 4])

  Args:
    mode: str, "element" (default) or "field", the granularity of the gate.
    gate_hidden_units: int or None, hidden width of the gate. Defaults to the gate's
      output width.
    gamma: float, upper bound of the gate values, must be > 0. Defaults to 2.0.
    hidden_activation: activation of the gate's hidden layer. Defaults to "relu".
    kernel_initializer: initializer of the gate's kernels. Defaults to "glorot_uniform".
    bias_initializer: initializer of the gate's biases. Defaults to "zeros".
    kernel_regularizer: optional regularizer of the gate's kernels.
    bias_regularizer: optional regularizer of the gate's biases.
    **kwargs: base `tf.keras.layers.Layer` arguments.

  Call arguments:
    general_embeddings: `(batch_size, num_fields, embedding_dim)` or
      `(batch_size, width)` tensor `E`.
    domain_embeddings: `(batch_size, num_domain_fields, embedding_dim)` or
      `(batch_size, domain_width)` tensor `E_d`.

  Output shape:
    The shape of `general_embeddings`.
  """

  def __init__(self,
               mode: str = "element",
               gate_hidden_units: Optional[int] = None,
               gamma: float = 2.0,
               hidden_activation: Any = "relu",
               kernel_initializer: Any = "glorot_uniform",
               bias_initializer: Any = "zeros",
               kernel_regularizer: Any = None,
               bias_regularizer: Any = None,
               **kwargs):
    super().__init__(**kwargs)
    if mode not in _MODES:
      raise ValueError(f"`mode` must be one of {_MODES}. Received: mode={mode!r}")
    if gamma <= 0:
      raise ValueError(f"`gamma` must be > 0. Received: gamma={gamma!r}")
    if gate_hidden_units is not None and (
        not isinstance(gate_hidden_units, int) or gate_hidden_units < 1):
      raise ValueError(
          "`gate_hidden_units` must be a positive integer or None. "
          f"Received: gate_hidden_units={gate_hidden_units!r}")
    self.mode = mode
    self.gate_hidden_units = gate_hidden_units
    self.gamma = float(gamma)
    self.hidden_activation = tf.keras.activations.get(hidden_activation)
    self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
    self.bias_initializer = tf.keras.initializers.get(bias_initializer)
    self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)
    self.gate = None

  def build(self, input_shape):
    general_shape = tf.TensorShape(input_shape)
    if self.mode == "field":
      if general_shape.rank != 3 or general_shape[1] is None:
        raise ValueError(
            "EPNet with mode='field' needs `general_embeddings` of shape "
            f"`(batch_size, num_fields, embedding_dim)`. Received: shape={general_shape}")
      gate_units = general_shape[1]
    else:
      if general_shape.rank not in (2, 3) or any(dim is None for dim in general_shape[1:]):
        raise ValueError(
            "`general_embeddings` must be 2-D `(batch_size, width)` or 3-D "
            "`(batch_size, num_fields, embedding_dim)` with known sizes. "
            f"Received: shape={general_shape}")
      gate_units = _shapes.flat_width(general_shape)
    self.gate = GateNU(
        units=gate_units,
        hidden_units=self.gate_hidden_units,
        gamma=self.gamma,
        hidden_activation=self.hidden_activation,
        kernel_initializer=self.kernel_initializer,
        bias_initializer=self.bias_initializer,
        kernel_regularizer=self.kernel_regularizer,
        bias_regularizer=self.bias_regularizer,
        name="gate")
    super().build(input_shape)

  def call(self, general_embeddings, domain_embeddings):
    # (batch_size, num_fields * embedding_dim) or (batch_size, width)
    general_flat = _shapes.flatten_embeddings(general_embeddings, "general_embeddings")
    # (batch_size, domain_width)
    domain_flat = _shapes.flatten_embeddings(domain_embeddings, "domain_embeddings")
    # The gate reads domain_flat ⊕ stop_gradient(general_flat), (batch_size,
    # domain_width + general_width), without forming the concatenation.
    delta = self.gate((domain_flat, general_flat))

    if self.mode == "field":
      # (batch_size, num_fields) -> (batch_size, num_fields, 1), broadcast over units
      return general_embeddings * delta[:, :, tf.newaxis]
    # (batch_size, width) -> the shape of general_embeddings
    return tf.reshape(general_flat * delta, tf.shape(general_embeddings))

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({
        "mode": self.mode,
        "gate_hidden_units": self.gate_hidden_units,
        "gamma": self.gamma,
        "hidden_activation": tf.keras.activations.serialize(self.hidden_activation),
        "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
        "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
        "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
    })
    return config
