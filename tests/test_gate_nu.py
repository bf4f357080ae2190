"""Tests of GateNU: values, output range, weights, serialization and validation."""

import doctest
import os

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pepnet_tf.layers import gate_nu
from pepnet_tf.layers.gate_nu import GateNU


def gate_reference(inputs, hidden_kernel, hidden_bias, output_kernel, output_bias, gamma):
  """Compute `gamma * sigmoid(W2 · relu(W1 · x + b1) + b2)` in float64 numpy."""
  hidden = np.maximum(inputs @ hidden_kernel + hidden_bias, 0.0)
  logits = hidden @ output_kernel + output_bias
  return gamma / (1.0 + np.exp(-logits))


def gate_weights(gate):
  """Return the gate's `(W1, b1, W2, b2)` as float64 numpy arrays."""
  return [np.asarray(weight, np.float64) for weight in (
      gate.hidden_layer.kernel, gate.hidden_layer.bias,
      gate.output_layer.kernel, gate.output_layer.bias)]


class GateNUTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.keras.utils.set_random_seed(11)
    self.rng = np.random.default_rng(11)

  def random_inputs(self, *shape, scale=1.0):
    return (scale * self.rng.normal(size=shape)).astype(np.float32)

  @parameterized.named_parameters(
      ("default", 2.0, None),
      ("gamma_half", 0.5, None),
      ("gamma_three_hidden_seven", 3.0, 7),
      ("hidden_one", 2.0, 1),
  )
  def test_values_match_numpy(self, gamma, hidden_units):
    # Random biases so that b1 and b2 are part of the comparison.
    gate = GateNU(units=4, hidden_units=hidden_units, gamma=gamma,
                  bias_initializer=tf.keras.initializers.RandomNormal(stddev=0.5, seed=3))
    inputs = self.random_inputs(5, 3)

    values = gate(inputs)

    expected = gate_reference(inputs.astype(np.float64), *gate_weights(gate), gamma)
    self.assertAllClose(expected, values, rtol=1e-5, atol=1e-6)

  def test_values_with_constant_weights(self):
    gate = GateNU(units=2, hidden_units=3, gamma=2.0,
                  kernel_initializer=tf.keras.initializers.Constant(0.5),
                  bias_initializer=tf.keras.initializers.Constant(-0.25))
    inputs = np.array([[1.0, -1.0], [2.0, 1.0]], np.float32)

    values = gate(inputs)

    # Row 0: hidden = relu(0.5 * 0 - 0.25) = 0, logit = -0.25.
    # Row 1: hidden = relu(0.5 * 3 - 0.25) = 1.25, logit = 3 * 0.5 * 1.25 - 0.25 = 1.625.
    expected_logits = np.array([[-0.25, -0.25], [1.625, 1.625]])
    self.assertAllClose(2.0 / (1.0 + np.exp(-expected_logits)), values)

  @parameterized.named_parameters(
      ("small_inputs", 1e-3),
      ("unit_inputs", 1.0),
      ("inputs_times_five", 5.0),
  )
  def test_range_random_inputs(self, scale):
    gate = GateNU(units=6, hidden_units=4, gamma=2.0)

    values = gate(self.random_inputs(64, 3, scale=scale))

    self.assertAllGreater(values, 0.0)
    self.assertAllLess(values, 2.0)

  def test_pair_matches_concatenated_input(self):
    gate = GateNU(units=4, hidden_units=6,
                  bias_initializer=tf.keras.initializers.RandomNormal(stddev=0.5, seed=3))
    inputs = tf.constant(self.random_inputs(5, 3))
    stopped = tf.constant(self.random_inputs(5, 2))

    with tf.GradientTape(persistent=True) as tape:
      tape.watch([inputs, stopped])
      values = gate((inputs, stopped))
      loss = tf.reduce_sum(values * tf.range(4, dtype=tf.float32))
    gradients = tape.gradient(loss, [inputs, stopped] + gate.trainable_weights)

    expected = gate_reference(
        np.concatenate([inputs, stopped], axis=-1).astype(np.float64),
        *gate_weights(gate), 2.0)
    self.assertAllClose(expected, values, rtol=1e-5, atol=1e-6)
    self.assertIsNone(gradients[1])

    # The same gate on the concatenation, stopped by hand, gives the same gradients.
    with tf.GradientTape() as tape:
      tape.watch(inputs)
      concatenated = tf.concat([inputs, tf.stop_gradient(stopped)], axis=-1)
      loss = tf.reduce_sum(gate(concatenated) * tf.range(4, dtype=tf.float32))
    expected_gradients = tape.gradient(loss, [inputs] + gate.trainable_weights)
    self.assertAllClose(expected_gradients[0], gradients[0], rtol=1e-5, atol=1e-6)
    for expected_gradient, gradient in zip(expected_gradients[1:], gradients[2:]):
      self.assertAllClose(expected_gradient, gradient, rtol=1e-5, atol=1e-6)

  def test_pair_weights_span_both_widths(self):
    gate = GateNU(units=4, hidden_units=5)

    values = gate((tf.ones((2, 3)), tf.ones((2, 7))))

    self.assertEqual(values.shape, (2, 4))
    self.assertEqual(gate.hidden_layer.kernel.shape, (10, 5))
    self.assertEqual(gate.compute_output_shape(((2, 3), (2, 7))), (2, 4))
    # A built gate also takes the concatenation as one tensor.
    self.assertAllClose(values, gate(tf.ones((2, 10))))

  def test_pair_input_rank(self):
    with self.assertRaisesRegex(ValueError, "GateNU expects a 2-D input"):
      GateNU(units=4)((tf.ones((2, 3)), tf.ones((2, 3, 4))))

  @parameterized.named_parameters(
      ("gamma_half", 0.5),
      ("gamma_two", 2.0),
      ("gamma_three", 3.0),
  )
  def test_range_large_inputs(self, gamma):
    # In float32 (TensorFlow 2.21 on CPU), sigmoid returns exactly 1.0 for logits above
    # about 16.6 and exactly 0.0 below about -87.3, so no float32 gate stays strictly
    # inside (0, gamma) for unbounded logits. The weights below turn inputs of
    # magnitude 1e4 into logits 16 and -80, near those limits but inside them.
    gate = GateNU(units=2, hidden_units=2, gamma=gamma)
    gate.build((None, 1))
    gate.set_weights([
        np.array([[0.0016, 0.008]], np.float32),        # W1: x -> (16, 80) at x = 1e4
        np.zeros(2, np.float32),                         # b1
        np.array([[1.0, 0.0], [0.0, -1.0]], np.float32),  # W2: -> logits (16, -80)
        np.zeros(2, np.float32),                         # b2
    ])
    inputs = np.array([[1e4], [-1e4], [5e3]], np.float32)

    values = gate(inputs)

    self.assertAllGreater(values, 0.0)
    self.assertAllLess(values, gamma)
    self.assertEqual(values.dtype, tf.float32)

  @parameterized.named_parameters(
      ("hidden_default", None, 3 * 4 + 4 + 4 * 4 + 4),
      ("hidden_five", 5, 3 * 5 + 5 + 5 * 4 + 4),
  )
  def test_weights_and_shape(self, hidden_units, expected_params):
    gate = GateNU(units=4, hidden_units=hidden_units)

    values = gate(tf.ones((2, 3)))

    self.assertEqual(values.shape, (2, 4))
    self.assertEqual(gate.compute_output_shape((2, 3)), (2, 4))
    self.assertEqual(gate.count_params(), expected_params)
    self.assertLen(gate.trainable_weights, 4)

  @parameterized.named_parameters(
      ("hidden_default", None),
      ("hidden_five", 5),
  )
  def test_config_round_trip(self, hidden_units):
    gate = GateNU(units=4, hidden_units=hidden_units, gamma=1.5,
                  hidden_activation="tanh", kernel_regularizer="l2")
    inputs = self.random_inputs(3, 6)
    expected = gate(inputs)

    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(gate))
    restored(inputs)
    restored.set_weights(gate.get_weights())

    self.assertIsInstance(restored, GateNU)
    self.assertEqual(restored.get_config(), gate.get_config())
    self.assertAllEqual(expected, restored(inputs))

  def test_saved_model_round_trip(self):
    inputs = tf.keras.Input((6,))
    model = tf.keras.Model(inputs, GateNU(units=4, hidden_units=3)(inputs))
    batch = self.random_inputs(3, 6)
    expected = model(batch)
    path = os.path.join(self.get_temp_dir(), "model")

    model.save(path, save_format="tf")
    restored = tf.keras.models.load_model(path)

    self.assertAllEqual(expected, restored(batch))

  @parameterized.named_parameters(
      ("zero", 0.0),
      ("negative", -1.0),
  )
  def test_invalid_gamma(self, gamma):
    with self.assertRaisesRegex(ValueError, "`gamma` must be > 0"):
      GateNU(units=4, gamma=gamma)

  @parameterized.named_parameters(
      ("zero", 0),
      ("float", 2.5),
  )
  def test_invalid_units(self, units):
    with self.assertRaisesRegex(ValueError, "`units` must be a positive integer"):
      GateNU(units=units)

  @parameterized.named_parameters(
      ("zero", 0),
      ("float", 2.5),
  )
  def test_invalid_hidden_units(self, hidden_units):
    with self.assertRaisesRegex(ValueError, "`hidden_units` must be a positive integer"):
      GateNU(units=4, hidden_units=hidden_units)

  @parameterized.named_parameters(
      ("one_d", (3,)),
      ("three_d", (2, 3, 4)),
      ("four_d", (2, 3, 4, 5)),
  )
  def test_input_rank(self, shape):
    with self.assertRaisesRegex(ValueError, "GateNU expects a 2-D input"):
      GateNU(units=4)(tf.ones(shape))

  def test_unknown_input_width(self):
    with self.assertRaisesRegex(ValueError, "GateNU needs a known input width"):
      GateNU(units=4)(tf.keras.Input((None,)))

  def test_docstring_examples(self):
    results = doctest.testmod(gate_nu, extraglobs={"tf": tf})

    self.assertGreater(results.attempted, 0)
    self.assertEqual(results.failed, 0)


if __name__ == "__main__":
  tf.test.main()
