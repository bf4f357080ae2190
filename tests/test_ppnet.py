"""Tests of PPNet: values, gradient contract, weights, serialization and validation."""

import doctest
import os

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pepnet_tf.layers import ppnet as ppnet_module
from pepnet_tf.layers.ppnet import PPNet

_BATCH_SIZE = 4
_O_EP_SHAPE = (_BATCH_SIZE, 3, 2)  # batch_size, num_fields, embedding_dim
_PRIOR_SHAPE = (_BATCH_SIZE, 2, 2)  # batch_size, num_prior_fields, embedding_dim

# (name, hidden_units, task_names)
_DEPTHS_AND_TASKS = (
    ("one_layer_one_task", [5], ["click"]),
    ("one_layer_three_tasks", [5], ["click", "like", "follow"]),
    ("two_layers_one_task", [5, 3], ["click"]),
    ("two_layers_three_tasks", [5, 3], ["click", "like", "follow"]),
)


def gate_values(inputs, gate, gamma):
  """Compute the gate values of `gate` for `inputs` in float64 numpy."""
  hidden_kernel, hidden_bias, output_kernel, output_bias = [
      np.asarray(weight, np.float64) for weight in (
          gate.hidden_layer.kernel, gate.hidden_layer.bias,
          gate.output_layer.kernel, gate.output_layer.bias)]
  hidden = np.maximum(inputs @ hidden_kernel + hidden_bias, 0.0)
  return gamma / (1.0 + np.exp(-(hidden @ output_kernel + output_bias)))


def tower_deltas(ppnet, o_ep, prior):
  """Return per layer the `(batch_size, num_tasks, input_width)` gate values in numpy."""
  batch_size = o_ep.shape[0]
  gate_input = np.concatenate(
      [prior.reshape(batch_size, -1), o_ep.reshape(batch_size, -1)], axis=1)
  gate_input = gate_input.astype(np.float64)
  deltas = []
  for gate, kernel in zip(ppnet.gates, ppnet.kernels):
    values = gate_values(gate_input, gate, ppnet.gamma)
    deltas.append(values.reshape(batch_size, ppnet.num_tasks, kernel.shape[1]))
  return deltas


def ppnet_reference(ppnet, o_ep, prior):
  """Compute PPNet's outputs in float64 numpy from the layer's weights (relu towers)."""
  batch_size = o_ep.shape[0]
  deltas = tower_deltas(ppnet, o_ep, prior) if ppnet.use_gates else None
  outputs = {}
  for task_index, name in enumerate(ppnet.task_names):
    hidden = o_ep.reshape(batch_size, -1).astype(np.float64)
    for layer_index, (kernel, bias) in enumerate(zip(ppnet.kernels, ppnet.biases)):
      if deltas is not None:
        hidden = hidden * deltas[layer_index][:, task_index, :]
      kernel = np.asarray(kernel, np.float64)[task_index]
      bias = np.asarray(bias, np.float64)[task_index]
      hidden = np.maximum(hidden @ kernel + bias, 0.0)
    outputs[name] = hidden
  return outputs


def expected_param_count(num_tasks, widths, prior_width, gate_hidden_units, use_gates):
  """Count PPNet's weights by hand. `widths` starts with the flattened O_ep width."""
  gate_input_width = prior_width + widths[0]
  total = 0
  for input_width, output_width in zip(widths[:-1], widths[1:]):
    total += num_tasks * input_width * output_width + num_tasks * output_width
    if use_gates:
      gate_units = num_tasks * input_width
      gate_hidden = gate_hidden_units or gate_units
      total += gate_input_width * gate_hidden + gate_hidden
      total += gate_hidden * gate_units + gate_units
  return total


class PPNetTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.keras.utils.set_random_seed(17)
    self.rng = np.random.default_rng(17)

  def random_inputs(self, *shape):
    return self.rng.normal(size=shape).astype(np.float32)

  @parameterized.named_parameters(
      ("gated_one_layer_one_task", True, [5], ["click"]),
      ("gated_one_layer_three_tasks", True, [5], ["click", "like", "follow"]),
      ("gated_two_layers_one_task", True, [5, 3], ["click"]),
      ("gated_two_layers_three_tasks", True, [5, 3], ["click", "like", "follow"]),
      # Every layer as wide as O_ep, so gating a layer's output instead of its input
      # keeps all shapes and shows up only in the values.
      ("gated_square_two_layers_two_tasks", True, [6, 6], ["click", "like"]),
      ("ungated_one_layer_one_task", False, [5], ["click"]),
      ("ungated_one_layer_three_tasks", False, [5], ["click", "like", "follow"]),
      ("ungated_two_layers_one_task", False, [5, 3], ["click"]),
      ("ungated_two_layers_three_tasks", False, [5, 3], ["click", "like", "follow"]),
  )
  def test_values_match_numpy(self, use_gates, hidden_units, task_names):
    ppnet = PPNet(task_names=task_names, hidden_units=hidden_units, use_gates=use_gates,
                  bias_initializer=tf.keras.initializers.RandomNormal(stddev=0.5, seed=7))
    o_ep = self.random_inputs(*_O_EP_SHAPE)
    prior = self.random_inputs(*_PRIOR_SHAPE)

    outputs = ppnet(o_ep, prior)

    expected = ppnet_reference(ppnet, o_ep, prior)
    self.assertEqual(sorted(outputs), sorted(task_names))
    for name in task_names:
      self.assertAllClose(expected[name], outputs[name], rtol=1e-5, atol=1e-6, msg=name)

  @parameterized.named_parameters(
      ("two_d_inputs", (_BATCH_SIZE, 6), (_BATCH_SIZE, 4)),
      ("three_d_inputs", _O_EP_SHAPE, _PRIOR_SHAPE),
      ("two_d_o_ep_three_d_prior", (_BATCH_SIZE, 6), _PRIOR_SHAPE),
  )
  def test_input_ranks_match_numpy(self, o_ep_shape, prior_shape):
    ppnet = PPNet(task_names=["click", "like"], hidden_units=[5, 3], gate_hidden_units=4,
                  gamma=1.5)
    o_ep = self.random_inputs(*o_ep_shape)
    prior = self.random_inputs(*prior_shape)

    outputs = ppnet(o_ep, prior)

    expected = ppnet_reference(ppnet, o_ep, prior)
    for name in ("click", "like"):
      self.assertAllClose(expected[name], outputs[name], rtol=1e-5, atol=1e-6, msg=name)

  def test_dropout_off_at_inference(self):
    ppnet = PPNet(task_names=["click", "like"], hidden_units=[5, 3], dropout=0.5)
    o_ep = self.random_inputs(*_O_EP_SHAPE)
    prior = self.random_inputs(*_PRIOR_SHAPE)

    outputs = ppnet(o_ep, prior, training=False)

    expected = ppnet_reference(ppnet, o_ep, prior)
    for name in ("click", "like"):
      self.assertAllClose(expected[name], outputs[name], rtol=1e-5, atol=1e-6, msg=name)

  def test_dropout_on_in_training(self):
    ppnet = PPNet(task_names=["click"], hidden_units=[64], dropout=0.5)
    o_ep = self.random_inputs(*_O_EP_SHAPE)
    prior = self.random_inputs(*_PRIOR_SHAPE)

    inference = ppnet(o_ep, prior, training=False)["click"]
    training = ppnet(o_ep, prior, training=True)["click"]

    self.assertNotAllClose(inference, training)

  def test_dropout_masks_resume_from_checkpoint(self):
    o_ep = self.random_inputs(*_O_EP_SHAPE)
    prior = self.random_inputs(*_PRIOR_SHAPE)
    ppnet = PPNet(task_names=["click"], hidden_units=[64], dropout=0.5, dropout_seed=1)
    ppnet(o_ep, prior, training=True)  # draws the first masks
    path = tf.train.Checkpoint(layer=ppnet).save(self.get_temp_dir() + "/dropout")
    expected = ppnet(o_ep, prior, training=True)["click"]

    restored = PPNet(task_names=["click"], hidden_units=[64], dropout=0.5, dropout_seed=7)
    restored(o_ep, prior, training=False)  # creates the weights and the generator
    tf.train.Checkpoint(layer=restored).restore(path).assert_consumed()

    self.assertAllEqual(restored(o_ep, prior, training=True)["click"], expected)

  @parameterized.named_parameters(*_DEPTHS_AND_TASKS)
  def test_o_ep_gradient_skips_gates(self, hidden_units, task_names):
    # The reference tower uses the gate values as constants, which is what
    # stop_gradient(O_ep) in the gate input must give.
    ppnet = PPNet(task_names=task_names, hidden_units=hidden_units)
    o_ep = tf.constant(self.random_inputs(*_O_EP_SHAPE))
    prior = tf.constant(self.random_inputs(*_PRIOR_SHAPE))
    # A random weight per output unit, so the loss does not sum units symmetrically.
    loss_weights = {name: tf.constant(self.random_inputs(_BATCH_SIZE, hidden_units[-1]))
                    for name in task_names}

    with tf.GradientTape() as tape:
      tape.watch(o_ep)
      outputs = ppnet(o_ep, prior)
      loss = tf.add_n([tf.reduce_sum(outputs[name] * loss_weights[name])
                       for name in task_names])
    gradient = tape.gradient(loss, o_ep)

    deltas = [tf.constant(delta, tf.float32)
              for delta in tower_deltas(ppnet, o_ep.numpy(), prior.numpy())]
    with tf.GradientTape() as tape:
      tape.watch(o_ep)
      reference_loss = 0.0
      for task_index, name in enumerate(task_names):
        hidden = tf.reshape(o_ep, [_BATCH_SIZE, -1])
        for layer_index, (kernel, bias) in enumerate(zip(ppnet.kernels, ppnet.biases)):
          hidden = hidden * deltas[layer_index][:, task_index, :]
          hidden = tf.nn.relu(tf.matmul(hidden, kernel[task_index]) + bias[task_index])
        reference_loss += tf.reduce_sum(hidden * loss_weights[name])
    reference_gradient = tape.gradient(reference_loss, o_ep)

    self.assertGreater(np.abs(reference_gradient.numpy()).max(), 0.0)
    self.assertAllClose(reference_gradient, gradient, rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(*_DEPTHS_AND_TASKS)
  def test_prior_gradient_nonzero(self, hidden_units, task_names):
    ppnet = PPNet(task_names=task_names, hidden_units=hidden_units)
    o_ep = tf.constant(self.random_inputs(*_O_EP_SHAPE))
    prior = tf.constant(self.random_inputs(*_PRIOR_SHAPE))

    with tf.GradientTape() as tape:
      tape.watch(prior)
      outputs = ppnet(o_ep, prior)
      loss = tf.add_n([tf.reduce_sum(outputs[name]) for name in task_names])
    gradient = tape.gradient(loss, prior)

    self.assertIsNotNone(gradient)
    self.assertGreater(np.abs(gradient.numpy()).max(), 0.0)

  def test_ungated_ignores_prior(self):
    ppnet = PPNet(task_names=["click"], hidden_units=[5], use_gates=False)
    o_ep = tf.constant(self.random_inputs(*_O_EP_SHAPE))
    prior = tf.constant(self.random_inputs(*_PRIOR_SHAPE))

    with tf.GradientTape() as tape:
      tape.watch(prior)
      loss = tf.reduce_sum(ppnet(o_ep, prior)["click"])

    self.assertIsNone(tape.gradient(loss, prior))
    self.assertEmpty(ppnet.gates)

  @parameterized.named_parameters(
      ("gated_one_layer_one_task", True, [5], 1, None),
      ("gated_two_layers_three_tasks", True, [5, 3], 3, None),
      ("gated_two_layers_three_tasks_gate_hidden_four", True, [5, 3], 3, 4),
      ("ungated_one_layer_one_task", False, [5], 1, None),
      ("ungated_two_layers_three_tasks", False, [5, 3], 3, None),
  )
  def test_weights_and_shape(self, use_gates, hidden_units, num_tasks, gate_hidden_units):
    task_names = ["click", "like", "follow"][:num_tasks]
    ppnet = PPNet(task_names=task_names, hidden_units=hidden_units, use_gates=use_gates,
                  gate_hidden_units=gate_hidden_units)

    outputs = ppnet(tf.ones(_O_EP_SHAPE), tf.ones(_PRIOR_SHAPE))

    for name in task_names:
      self.assertEqual(outputs[name].shape, (_BATCH_SIZE, hidden_units[-1]))
    expected = expected_param_count(num_tasks, [6] + hidden_units, 4, gate_hidden_units,
                                    use_gates)
    self.assertEqual(ppnet.count_params(), expected)
    self.assertLen(ppnet.kernels, len(hidden_units))
    self.assertLen(ppnet.gates, len(hidden_units) if use_gates else 0)

  @parameterized.named_parameters(
      ("gated", True),
      ("ungated", False),
  )
  def test_config_round_trip(self, use_gates):
    ppnet = PPNet(task_names=["click", "like"], hidden_units=[5, 3], activation="tanh",
                  dropout=0.25, gate_hidden_units=4, gamma=1.5, use_gates=use_gates,
                  kernel_regularizer="l2")
    o_ep = self.random_inputs(*_O_EP_SHAPE)
    prior = self.random_inputs(*_PRIOR_SHAPE)
    expected = ppnet(o_ep, prior)

    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(ppnet))
    restored(o_ep, prior)
    restored.set_weights(ppnet.get_weights())

    self.assertIsInstance(restored, PPNet)
    self.assertEqual(restored.get_config(), ppnet.get_config())
    outputs = restored(o_ep, prior)
    for name in ("click", "like"):
      self.assertAllEqual(expected[name], outputs[name], msg=name)

  @parameterized.named_parameters(
      ("gated", True),
      ("ungated", False),
  )
  def test_saved_model_round_trip(self, use_gates):
    o_ep_input = tf.keras.Input(_O_EP_SHAPE[1:])
    prior_input = tf.keras.Input(_PRIOR_SHAPE[1:])
    outputs = PPNet(task_names=["click", "like"], hidden_units=[5, 3],
                    use_gates=use_gates)(o_ep_input, prior_input)
    model = tf.keras.Model([o_ep_input, prior_input], outputs)
    batch = [self.random_inputs(*_O_EP_SHAPE), self.random_inputs(*_PRIOR_SHAPE)]
    expected = model(batch)
    path = os.path.join(self.get_temp_dir(), "model")

    model.save(path, save_format="tf")
    restored = tf.keras.models.load_model(path)

    outputs = restored(batch)
    for name in ("click", "like"):
      self.assertAllEqual(expected[name], outputs[name], msg=name)

  @parameterized.named_parameters(
      ("empty_list", []),
      ("plain_string", "click"),
      ("empty_name", ["click", ""]),
      ("not_a_string", ["click", 3]),
  )
  def test_invalid_task_names(self, task_names):
    with self.assertRaisesRegex(ValueError, "`task_names` must"):
      PPNet(task_names=task_names, hidden_units=[4])

  def test_duplicate_task_names(self):
    with self.assertRaisesRegex(ValueError, "`task_names` must be unique"):
      PPNet(task_names=["click", "like", "click"], hidden_units=[4])

  @parameterized.named_parameters(
      ("empty_list", []),
      ("plain_int", 4),
      ("zero_width", [4, 0]),
      ("float_width", [4, 2.5]),
  )
  def test_invalid_hidden_units(self, hidden_units):
    with self.assertRaisesRegex(ValueError, "`hidden_units` must be a non-empty list"):
      PPNet(task_names=["click"], hidden_units=hidden_units)

  @parameterized.named_parameters(
      ("negative", -0.1),
      ("one", 1.0),
      ("above_one", 1.5),
  )
  def test_invalid_dropout(self, dropout):
    with self.assertRaisesRegex(ValueError, r"`dropout` must be in \[0, 1\)"):
      PPNet(task_names=["click"], hidden_units=[4], dropout=dropout)

  @parameterized.named_parameters(
      ("zero", 0.0),
      ("negative", -1.0),
  )
  def test_invalid_gamma(self, gamma):
    with self.assertRaisesRegex(ValueError, "`gamma` must be > 0"):
      PPNet(task_names=["click"], hidden_units=[4], gamma=gamma)

  @parameterized.named_parameters(
      ("zero", 0),
      ("float", 1.5),
  )
  def test_invalid_gate_hidden_units(self, gate_hidden_units):
    with self.assertRaisesRegex(ValueError, "`gate_hidden_units` must be a positive"):
      PPNet(task_names=["click"], hidden_units=[4], gate_hidden_units=gate_hidden_units)

  @parameterized.named_parameters(
      ("one_d", (6,)),
      ("four_d", (2, 3, 2, 1)),
  )
  def test_o_ep_rank(self, o_ep_shape):
    with self.assertRaisesRegex(ValueError, "`o_ep` must be 2-D"):
      PPNet(task_names=["click"], hidden_units=[4])(tf.ones(o_ep_shape), tf.ones((2, 4)))

  def test_unknown_o_ep_size(self):
    with self.assertRaisesRegex(ValueError, "`o_ep` must be 2-D"):
      PPNet(task_names=["click"], hidden_units=[4])(
          tf.keras.Input((None, 2)), tf.keras.Input((4,)))

  @parameterized.named_parameters(
      ("one_d", (2,)),
      ("four_d", (2, 2, 2, 1)),
  )
  def test_prior_rank(self, prior_shape):
    with self.assertRaisesRegex(ValueError, "`prior_embeddings` must be 2-D"):
      PPNet(task_names=["click"], hidden_units=[4])(tf.ones((2, 6)), tf.ones(prior_shape))

  @parameterized.named_parameters(
      ("two_d", (2, 0)),
      ("three_d", (2, 0, 4)),
  )
  def test_empty_prior(self, prior_shape):
    with self.assertRaisesRegex(ValueError, "`prior_embeddings` must not be empty"):
      PPNet(task_names=["click"], hidden_units=[4])(tf.ones((2, 6)), tf.ones(prior_shape))

  def test_docstring_examples(self):
    results = doctest.testmod(ppnet_module, extraglobs={"tf": tf})

    self.assertGreater(results.attempted, 0)
    self.assertEqual(results.failed, 0)


if __name__ == "__main__":
  tf.test.main()
