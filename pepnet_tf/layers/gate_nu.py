"""Gate Neural Unit: a two-layer network whose output scales another signal."""

from typing import Any, Optional

import tensorflow as tf

from pepnet_tf.layers._initializers import clone_initializer


@tf.keras.utils.register_keras_serializable(package="pepnet_tf")
class GateNU(tf.keras.layers.Layer):
  """Gate Neural Unit (Gate NU) of PEPNet.

  Computes `gamma * sigmoid(W2 · relu(W1 · x + b1) + b2)`, so every output lies in
  `(0, gamma)`. With the default `gamma = 2` a gate can halve or double the signal it
  multiplies, and 1 is neutral. Introduced in "PEPNet: Parameter and Embedding
  Personalized Network for Infusing with Personalized Prior Information"
  (Chang et al., KDD 2023).

  Example:

  >>> gate = GateNU(units=4, hidden_units=8)
  >>> values = gate(tf.ones((2, 3)))
  >>> values.shape
  TensorShape([2, 4])
  >>> bool(tf.reduce_all((values > 0.0) & (values < 2.0)))
  True

  Args:
    units: int, width of the output, one gate value per unit.
    hidden_units: int or None, width of the hidden layer. Defaults to `units`.
    gamma: float, upper bound of the gate values, must be > 0. Defaults to 2.0.
    hidden_activation: activation of the hidden layer. Defaults to "relu".
    kernel_initializer: initializer of both kernels. Defaults to "glorot_uniform".
    bias_initializer: initializer of both biases. Defaults to "zeros".
    kernel_regularizer: optional regularizer of both kernels.
    bias_regularizer: optional regularizer of both biases.
    **kwargs: base `tf.keras.layers.Layer` arguments.

  Input shape:
    2-D tensor with shape `(batch_size, input_dim)`, or a pair `(inputs,
    stopped_inputs)` of 2-D tensors whose widths sum to `input_dim`. A pair computes
    the gate of `inputs ⊕ stop_gradient(stopped_inputs)` with the first kernel split
    by rows, so it neither forms the concatenation nor computes a gradient for
    `stopped_inputs` in training.

  Output shape:
    2-D tensor with shape `(batch_size, units)`.
  """

  def __init__(self,
               units: int,
               hidden_units: Optional[int] = None,
               gamma: float = 2.0,
               hidden_activation: Any = "relu",
               kernel_initializer: Any = "glorot_uniform",
               bias_initializer: Any = "zeros",
               kernel_regularizer: Any = None,
               bias_regularizer: Any = None,
               **kwargs):
    super().__init__(**kwargs)
    if not isinstance(units, int) or units < 1:
      raise ValueError(f"`units` must be a positive integer. Received: units={units!r}")
    if hidden_units is not None and (not isinstance(hidden_units, int) or hidden_units < 1):
      raise ValueError(
          "`hidden_units` must be a positive integer or None. "
          f"Received: hidden_units={hidden_units!r}")
    if gamma <= 0:
      raise ValueError(f"`gamma` must be > 0. Received: gamma={gamma!r}")

    self.units = units
    self.hidden_units = hidden_units if hidden_units is not None else units
    self.gamma = float(gamma)
    self.hidden_activation = tf.keras.activations.get(hidden_activation)
    self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
    self.bias_initializer = tf.keras.initializers.get(bias_initializer)
    self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)
    self._explicit_hidden_units = hidden_units

    self.hidden_layer = tf.keras.layers.Dense(
        self.hidden_units,
        activation=self.hidden_activation,
        kernel_initializer=clone_initializer(self.kernel_initializer),
        bias_initializer=clone_initializer(self.bias_initializer),
        kernel_regularizer=self.kernel_regularizer,
        bias_regularizer=self.bias_regularizer,
        name="hidden")
    self.output_layer = tf.keras.layers.Dense(
        self.units,
        activation="sigmoid",
        kernel_initializer=clone_initializer(self.kernel_initializer),
        bias_initializer=clone_initializer(self.bias_initializer),
        kernel_regularizer=self.kernel_regularizer,
        bias_regularizer=self.bias_regularizer,
        name="output")

  def build(self, input_shape):
    if _is_shape_pair(input_shape):
      # A pair `(inputs, stopped_inputs)`: the kernel spans both widths.
      shapes = [_check_2d(shape) for shape in input_shape]
      input_shape = tf.TensorShape([shapes[0][0], shapes[0][1] + shapes[1][1]])
    else:
      input_shape = _check_2d(input_shape)
    self.hidden_layer.build(input_shape)
    self.output_layer.build((input_shape[0], self.hidden_units))
    super().build(input_shape)

  def call(self, inputs):
    if isinstance(inputs, (list, tuple)):
      inputs, stopped_inputs = inputs
      # The kernel's rows for inputs and for stopped_inputs. A split, whose gradient
      # is one concatenation, costs less than two slices.
      kernel, stopped_kernel = tf.split(
          self.hidden_layer.kernel, [inputs.shape[-1], stopped_inputs.shape[-1]])
      # (batch_size, width) x (width, hidden_units)
      #   + (batch_size, stopped_width) x (stopped_width, hidden_units), which equals
      # the product of the concatenated input with the whole kernel.
      hidden = tf.matmul(inputs, kernel) + tf.matmul(
          tf.stop_gradient(stopped_inputs), stopped_kernel)
      hidden = self.hidden_activation(tf.nn.bias_add(hidden, self.hidden_layer.bias))
    else:
      # inputs: (batch_size, input_dim) -> hidden: (batch_size, hidden_units)
      hidden = self.hidden_layer(inputs)
    # (batch_size, units), each value in (0, gamma)
    return self.gamma * self.output_layer(hidden)

  def compute_output_shape(self, input_shape):
    if _is_shape_pair(input_shape):
      input_shape = input_shape[0]
    return tf.TensorShape(input_shape)[:-1].concatenate([self.units])

  def get_config(self):
    config = super().get_config()
    config.update({
        "units": self.units,
        "hidden_units": self._explicit_hidden_units,
        "gamma": self.gamma,
        "hidden_activation": tf.keras.activations.serialize(self.hidden_activation),
        "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
        "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
        "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
    })
    return config


def _is_shape_pair(input_shape) -> bool:
  """Return whether `input_shape` contains the two shapes of `(inputs, stopped_inputs)`."""
  return (isinstance(input_shape, (list, tuple)) and len(input_shape) == 2
          and all(isinstance(shape, (tf.TensorShape, list, tuple)) for shape in input_shape))


def _check_2d(shape) -> tf.TensorShape:
  """Return `shape` as a TensorShape, or raise ValueError unless it is 2-D with a known width."""
  shape = tf.TensorShape(shape)
  if shape.rank != 2:
    raise ValueError(
        f"GateNU expects a 2-D input `(batch_size, input_dim)`. Received: input shape={shape}")
  if shape[-1] is None:
    raise ValueError(f"GateNU needs a known input width. Received: input shape={shape}")
  return shape
