"""PPNet: per-task towers whose layer inputs are scaled by gates on the prior ids."""

import random
from typing import Any, Dict, Optional, Sequence

import tensorflow as tf

from pepnet_tf.layers import _shapes
from pepnet_tf.layers._initializers import clone_initializer
from pepnet_tf.layers.gate_nu import GateNU


def validate_task_names(task_names: Sequence[str]) -> list:
  """Return `task_names` as a list, or raise ValueError if empty, duplicated or not str."""
  if isinstance(task_names, str) or not task_names:
    raise ValueError(
        "`task_names` must be a non-empty list of strings. "
        f"Received: task_names={task_names!r}")
  names = list(task_names)
  if not all(isinstance(name, str) and name for name in names):
    raise ValueError(
        f"`task_names` must contain non-empty strings. Received: task_names={names!r}")
  if len(set(names)) != len(names):
    raise ValueError(f"`task_names` must be unique. Received: task_names={names!r}")
  return names


class _PerTaskInitializer(tf.keras.initializers.Initializer):
  """Initialize a `(num_tasks, ...)` kernel one task slice at a time.

  A glorot initializer would otherwise count `num_tasks` in the fan-in and fan-out and
  give each task's kernel a smaller scale than a `Dense` layer of the same size.
  """

  def __init__(self, initializer):
    self.initializer = initializer

  def __call__(self, shape, dtype=None, **kwargs):
    slices = [clone_initializer(self.initializer)(shape[1:], dtype=dtype)
              for _ in range(shape[0])]
    return tf.stack(slices)

  def get_config(self):
    return {"initializer": tf.keras.initializers.serialize(self.initializer)}


@tf.keras.utils.register_keras_serializable(package="pepnet_tf")
class PPNet(tf.keras.layers.Layer):
  """Parameter Personalized Network (PPNet) of PEPNet.

  Each task `t` has a tower of `L = len(hidden_units)` dense layers. For layer `l`
  one Gate NU reads `G = O_prior ⊕ stop_gradient(O_ep)` and outputs
  `num_tasks * n_l` values, where `n_l` is that layer's input width. They are split
  per task and scale the layer's input:

      H_t^(l+1) = activation(W_t^l · (delta_t^l ⊙ H_t^l) + b_t^l),  H_t^0 = O_ep

  so the first tower input is gated too. `O_ep` gets no gradient through the gates,
  while the prior embeddings (user, item and author ids, the most personalized
  signals) learn through them. With `use_gates=False` the layer is a plain set of
  per-task towers, the baseline of an ablation. From "PEPNet: Parameter and Embedding
  Personalized Network for Infusing with Personalized Prior Information"
  (Chang et al., KDD 2023).

  The tower kernels of layer `l` are stored stacked, `(num_tasks, n_l, n_(l+1))`, and
  applied with one `einsum`, which is faster than `num_tasks` separate `Dense` layers.

  Example:

  >>> ppnet = PPNet(task_names=["click", "like"], hidden_units=[8, 4])
  >>> o_ep = tf.ones((2, 5, 4))   # batch_size, num_fields, embedding_dim
  >>> prior = tf.ones((2, 3, 4))  # batch_size, num_prior_fields, embedding_dim
  >>> outputs = ppnet(o_ep, prior)
  >>> sorted(outputs), outputs["click"].shape
  (['click', 'like'], TensorShape([2, 4]))

  Args:
    task_names: list of str, one tower per task, unique and non-empty.
    hidden_units: list of int, the width of each tower layer, at least one.
    activation: activation of every tower layer. Defaults to "relu".
    dropout: float in [0, 1), dropout rate after every tower layer. Defaults to 0.
    dropout_seed: int or None, seed of the dropout masks. Their random state is the
      layer's `tf.random.Generator` `dropout_generator`, so a checkpoint restores it
      and a resumed run draws the same masks as an uninterrupted one. Defaults to
      None: a seed drawn from Python's `random`, which
      `tf.keras.utils.set_random_seed` seeds.
    gate_hidden_units: int or None, hidden width of every gate. Defaults to the
      gate's output width.
    gamma: float, upper bound of the gate values, must be > 0. Defaults to 2.0.
    use_gates: bool, whether the gates scale the layer inputs. Defaults to True.
    kernel_initializer: initializer of tower and gate kernels. Defaults to
      "glorot_uniform".
    bias_initializer: initializer of tower and gate biases. Defaults to "zeros".
    kernel_regularizer: optional regularizer of tower and gate kernels.
    bias_regularizer: optional regularizer of tower and gate biases.
    **kwargs: base `tf.keras.layers.Layer` arguments.

  Call arguments:
    o_ep: `(batch_size, num_fields, embedding_dim)` or `(batch_size, width)` tensor,
      the output of EPNet (or the general embeddings when EPNet is off).
    prior_embeddings: `(batch_size, num_prior_fields, embedding_dim)` or
      `(batch_size, prior_width)` tensor of the prior id embeddings, not empty.
    training: bool, whether dropout is active.

  Returns:
    A dict from task name to a `(batch_size, hidden_units[-1])` tensor.
  """

  def __init__(self,
               task_names: Sequence[str],
               hidden_units: Sequence[int],
               activation: Any = "relu",
               dropout: float = 0.0,
               dropout_seed: Optional[int] = None,
               gate_hidden_units: Optional[int] = None,
               gamma: float = 2.0,
               use_gates: bool = True,
               kernel_initializer: Any = "glorot_uniform",
               bias_initializer: Any = "zeros",
               kernel_regularizer: Any = None,
               bias_regularizer: Any = None,
               **kwargs):
    super().__init__(**kwargs)
    self.task_names = validate_task_names(task_names)
    if isinstance(hidden_units, int) or not hidden_units or not all(
        isinstance(units, int) and units > 0 for units in hidden_units):
      raise ValueError(
          "`hidden_units` must be a non-empty list of positive integers. "
          f"Received: hidden_units={hidden_units!r}")
    if not 0.0 <= dropout < 1.0:
      raise ValueError(f"`dropout` must be in [0, 1). Received: dropout={dropout!r}")
    if gamma <= 0:
      raise ValueError(f"`gamma` must be > 0. Received: gamma={gamma!r}")
    if gate_hidden_units is not None and (
        not isinstance(gate_hidden_units, int) or gate_hidden_units < 1):
      raise ValueError(
          "`gate_hidden_units` must be a positive integer or None. "
          f"Received: gate_hidden_units={gate_hidden_units!r}")

    self.hidden_units = list(hidden_units)
    self.activation = tf.keras.activations.get(activation)
    self.dropout = float(dropout)
    self.gate_hidden_units = gate_hidden_units
    self.gamma = float(gamma)
    self.use_gates = bool(use_gates)
    self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)
    self.bias_initializer = tf.keras.initializers.get(bias_initializer)
    self.kernel_regularizer = tf.keras.regularizers.get(kernel_regularizer)
    self.bias_regularizer = tf.keras.regularizers.get(bias_regularizer)
    self.dropout_seed = dropout_seed
    self.dropout_generator = None
    self.gates = []
    self.kernels = []
    self.biases = []

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  def build(self, input_shape):
    o_ep_shape = tf.TensorShape(input_shape)
    if o_ep_shape.rank not in (2, 3) or any(dim is None for dim in o_ep_shape[1:]):
      raise ValueError(
          "`o_ep` must be 2-D `(batch_size, width)` or 3-D "
          f"`(batch_size, num_fields, embedding_dim)` with known sizes. "
          f"Received: shape={o_ep_shape}")
    if self.dropout > 0:
      seed = self.dropout_seed
      if seed is None:
        seed = random.randint(0, 2**31 - 1)
      self.dropout_generator = tf.random.Generator.from_seed(seed)
    widths = [_shapes.flat_width(o_ep_shape)] + self.hidden_units
    for layer_index, (input_width, output_width) in enumerate(zip(widths[:-1], widths[1:])):
      if self.use_gates:
        self.gates.append(GateNU(
            units=self.num_tasks * input_width,
            hidden_units=self.gate_hidden_units,
            gamma=self.gamma,
            kernel_initializer=self.kernel_initializer,
            bias_initializer=self.bias_initializer,
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            name=f"gate_{layer_index}"))
      self.kernels.append(self.add_weight(
          name=f"kernel_{layer_index}",
          shape=(self.num_tasks, input_width, output_width),
          initializer=_PerTaskInitializer(self.kernel_initializer),
          regularizer=self.kernel_regularizer))
      self.biases.append(self.add_weight(
          name=f"bias_{layer_index}",
          shape=(self.num_tasks, output_width),
          initializer=clone_initializer(self.bias_initializer),
          regularizer=self.bias_regularizer))
    super().build(input_shape)

  def call(self, o_ep, prior_embeddings, training=None) -> Dict[str, tf.Tensor]:
    # (batch_size, o_ep_width)
    o_ep_flat = _shapes.flatten_embeddings(o_ep, "o_ep")
    batch_size = tf.shape(o_ep_flat)[0]

    if self.use_gates:
      # (batch_size, prior_width)
      prior_flat = _shapes.flatten_embeddings(prior_embeddings, "prior_embeddings")
      if prior_flat.shape[-1] == 0:
        raise ValueError(
            "`prior_embeddings` must not be empty: PPNet's gates exist to read the "
            f"prior ids. Received: shape={prior_embeddings.shape}")
      # The gate reads prior_flat ⊕ stop_gradient(o_ep_flat), (batch_size,
      # prior_width + o_ep_width), without forming the concatenation.
      gate_input = (prior_flat, o_ep_flat)

    # (num_tasks, batch_size, o_ep_width): every tower starts from O_ep
    hidden = tf.broadcast_to(o_ep_flat, [self.num_tasks, batch_size, o_ep_flat.shape[-1]])
    for layer_index, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
      if self.use_gates:
        input_width = kernel.shape[1]
        # (batch_size, num_tasks * input_width) -> (batch_size, num_tasks, input_width)
        delta = tf.reshape(self.gates[layer_index](gate_input),
                           [-1, self.num_tasks, input_width])
        # -> (num_tasks, batch_size, input_width)
        hidden = hidden * tf.transpose(delta, [1, 0, 2])
      # (num_tasks, batch_size, input_width) x (num_tasks, input_width, output_width)
      hidden = tf.einsum("tbi,tio->tbo", hidden, kernel) + bias[:, tf.newaxis, :]
      hidden = self.activation(hidden)
      if training and self.dropout_generator is not None:
        # A fresh stateless seed per layer and step, drawn from the tracked generator.
        hidden = tf.nn.experimental.stateless_dropout(
            hidden, rate=self.dropout, seed=self.dropout_generator.make_seeds(1)[:, 0])

    # (num_tasks, batch_size, hidden_units[-1]) -> task -> (batch_size, hidden_units[-1])
    return {name: hidden[task_index] for task_index, name in enumerate(self.task_names)}

  def get_config(self):
    config = super().get_config()
    config.update({
        "task_names": list(self.task_names),
        "hidden_units": list(self.hidden_units),
        "activation": tf.keras.activations.serialize(self.activation),
        "dropout": self.dropout,
        "dropout_seed": self.dropout_seed,
        "gate_hidden_units": self.gate_hidden_units,
        "gamma": self.gamma,
        "use_gates": self.use_gates,
        "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        "bias_initializer": tf.keras.initializers.serialize(self.bias_initializer),
        "kernel_regularizer": tf.keras.regularizers.serialize(self.kernel_regularizer),
        "bias_regularizer": tf.keras.regularizers.serialize(self.bias_regularizer),
    })
    return config
