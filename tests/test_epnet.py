"""Tests of EPNet: values, gradient contract, weights, serialization and validation."""

import doctest
import os

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pepnet_tf.layers import epnet as epnet_module
from pepnet_tf.layers.epnet import EPNet

# (name, mode, shape of the general embeddings)
_MODES_AND_SHAPES = (
    ("element_2d", "element", (4, 6)),
    ("element_3d", "element", (4, 3, 2)),
    ("field_3d", "field", (4, 3, 2)),
)


def gate_reference(inputs, gate, gamma):
  """Compute the gate values of `gate` for `inputs` in float64 numpy."""
  hidden_kernel, hidden_bias, output_kernel, output_bias = [
      np.asarray(weight, np.float64) for weight in (
          gate.hidden_layer.kernel, gate.hidden_layer.bias,
          gate.output_layer.kernel, gate.output_layer.bias)]
  hidden = np.maximum(inputs @ hidden_kernel + hidden_bias, 0.0)
  return gamma / (1.0 + np.exp(-(hidden @ output_kernel + output_bias)))


def epnet_reference(epnet, general, domain_side):
  """Compute EPNet's output in float64 numpy from the layer's weights."""
  batch_size = general.shape[0]
  general = general.astype(np.float64)
  general_flat = general.reshape(batch_size, -1)
  gate_input = np.concatenate(
      [domain_side.astype(np.float64).reshape(batch_size, -1), general_flat], axis=1)
  delta = gate_reference(gate_input, epnet.gate, epnet.gamma)
  if epnet.mode == "field":
    # (batch_size, num_fields) scales every unit of its field.
    return general * delta[:, :, np.newaxis]
  return (general_flat * delta).reshape(general.shape)


class EPNetTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.keras.utils.set_random_seed(13)
    self.rng = np.random.default_rng(13)

  def random_inputs(self, *shape):
    return self.rng.normal(size=shape).astype(np.float32)

  @parameterized.named_parameters(
      ("element_2d", "element", (4, 6), None, 2.0),
      ("element_3d", "element", (4, 3, 2), None, 2.0),
      ("field_3d", "field", (4, 3, 2), None, 2.0),
      ("element_3d_hidden_five_gamma_one", "element", (4, 3, 2), 5, 1.0),
      ("field_3d_hidden_five_gamma_one", "field", (4, 3, 2), 5, 1.0),
  )
  def test_values_match_numpy(self, mode, general_shape, gate_hidden_units, gamma):
    epnet = EPNet(mode=mode, gate_hidden_units=gate_hidden_units, gamma=gamma,
                  bias_initializer=tf.keras.initializers.RandomNormal(stddev=0.5, seed=5))
    general = self.random_inputs(*general_shape)
    domain_side = self.random_inputs(4, 2, 2)

    outputs = epnet(general, domain_side)

    expected = epnet_reference(epnet, general, domain_side)
    self.assertAllClose(expected, outputs, rtol=1e-5, atol=1e-6)

  @parameterized.named_parameters(*_MODES_AND_SHAPES)
  def test_general_gradient_is_gate(self, mode, general_shape):
    # With E stopped inside the gate, O_ep = delta ⊙ E is linear in E, so the
    # gradient of sum(O_ep) with respect to E is exactly delta.
    epnet = EPNet(mode=mode)
    general = tf.constant(self.random_inputs(*general_shape))
    domain_side = tf.constant(self.random_inputs(4, 5))

    with tf.GradientTape() as tape:
      tape.watch(general)
      outputs = epnet(general, domain_side)
      loss = tf.reduce_sum(outputs)
    gradient = tape.gradient(loss, general)

    # The gate's own input, domain_side ⊕ general, passed as EPNet passes it so that
    # the rounding matches.
    delta = epnet.gate((domain_side, tf.reshape(general, [4, -1])))
    if mode == "field":
      # (batch_size, num_fields) -> (batch_size, num_fields, embedding_dim)
      delta = tf.broadcast_to(delta[:, :, tf.newaxis], general_shape)
    else:
      delta = tf.reshape(delta, general_shape)
    self.assertAllEqual(delta, gradient)

  @parameterized.named_parameters(*_MODES_AND_SHAPES)
  def test_domain_side_gradient_nonzero(self, mode, general_shape):
    epnet = EPNet(mode=mode)
    general = tf.constant(self.random_inputs(*general_shape))
    domain_side = tf.constant(self.random_inputs(4, 5))

    with tf.GradientTape() as tape:
      tape.watch(domain_side)
      loss = tf.reduce_sum(epnet(general, domain_side))
    gradient = tape.gradient(loss, domain_side)

    self.assertIsNotNone(gradient)
    self.assertGreater(np.abs(gradient.numpy()).max(), 0.0)

  @parameterized.named_parameters(
      # The gate reads domain_width + general_width values and outputs general_width.
      ("element_2d", "element", (2, 6), None, (6 + 6) * 6 + 6 + 6 * 6 + 6),
      ("element_3d", "element", (2, 3, 2), None, (6 + 6) * 6 + 6 + 6 * 6 + 6),
      ("element_3d_hidden_four", "element", (2, 3, 2), 4, (6 + 6) * 4 + 4 + 4 * 6 + 6),
      # The gate outputs num_fields values.
      ("field_3d", "field", (2, 3, 2), None, (6 + 6) * 3 + 3 + 3 * 3 + 3),
      ("field_3d_hidden_four", "field", (2, 3, 2), 4, (6 + 6) * 4 + 4 + 4 * 3 + 3),
  )
  def test_weights_and_shape(self, mode, general_shape, gate_hidden_units,
                             expected_params):
    epnet = EPNet(mode=mode, gate_hidden_units=gate_hidden_units)

    outputs = epnet(tf.ones(general_shape), tf.ones((2, 6)))

    self.assertEqual(outputs.shape, general_shape)
    self.assertEqual(epnet.compute_output_shape(general_shape), general_shape)
    self.assertEqual(epnet.count_params(), expected_params)
    self.assertLen(epnet.trainable_weights, 4)

  @parameterized.named_parameters(*_MODES_AND_SHAPES)
  def test_config_round_trip(self, mode, general_shape):
    epnet = EPNet(mode=mode, gate_hidden_units=4, gamma=1.5, hidden_activation="tanh",
                  bias_regularizer="l2")
    general = self.random_inputs(*general_shape)
    domain_side = self.random_inputs(4, 3)
    expected = epnet(general, domain_side)

    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(epnet))
    restored(general, domain_side)
    restored.set_weights(epnet.get_weights())

    self.assertIsInstance(restored, EPNet)
    self.assertEqual(restored.get_config(), epnet.get_config())
    self.assertAllEqual(expected, restored(general, domain_side))

  @parameterized.named_parameters(*_MODES_AND_SHAPES)
  def test_saved_model_round_trip(self, mode, general_shape):
    general_input = tf.keras.Input(general_shape[1:])
    domain_input = tf.keras.Input((2, 2))
    outputs = EPNet(mode=mode)(general_input, domain_input)
    model = tf.keras.Model([general_input, domain_input], outputs)
    batch = [self.random_inputs(*general_shape), self.random_inputs(4, 2, 2)]
    expected = model(batch)
    path = os.path.join(self.get_temp_dir(), "model")

    model.save(path, save_format="tf")
    restored = tf.keras.models.load_model(path)

    self.assertAllEqual(expected, restored(batch))

  def test_invalid_mode(self):
    with self.assertRaisesRegex(ValueError, "`mode` must be one of"):
      EPNet(mode="unit")

  @parameterized.named_parameters(
      ("zero", 0.0),
      ("negative", -2.0),
  )
  def test_invalid_gamma(self, gamma):
    with self.assertRaisesRegex(ValueError, "`gamma` must be > 0"):
      EPNet(gamma=gamma)

  @parameterized.named_parameters(
      ("zero", 0),
      ("float", 1.5),
  )
  def test_invalid_gate_hidden_units(self, gate_hidden_units):
    with self.assertRaisesRegex(ValueError, "`gate_hidden_units` must be a positive"):
      EPNet(gate_hidden_units=gate_hidden_units)

  @parameterized.named_parameters(
      ("element_one_d", "element", (6,)),
      ("element_four_d", "element", (2, 3, 2, 2)),
      ("field_one_d", "field", (6,)),
      ("field_four_d", "field", (2, 3, 2, 2)),
  )
  def test_general_rank(self, mode, general_shape):
    with self.assertRaisesRegex(ValueError, "`general_embeddings`"):
      EPNet(mode=mode)(tf.ones(general_shape), tf.ones((2, 3)))

  def test_field_mode_with_2d_general(self):
    with self.assertRaisesRegex(ValueError, "mode='field' needs `general_embeddings`"):
      EPNet(mode="field")(tf.ones((2, 6)), tf.ones((2, 3)))

  @parameterized.named_parameters(
      ("element_one_d", "element", (3,)),
      ("element_four_d", "element", (2, 3, 1, 1)),
      ("field_one_d", "field", (3,)),
      ("field_four_d", "field", (2, 3, 1, 1)),
  )
  def test_domain_side_rank(self, mode, domain_shape):
    with self.assertRaisesRegex(ValueError, "`domain_embeddings`"):
      EPNet(mode=mode)(tf.ones((2, 3, 2)), tf.ones(domain_shape))

  @parameterized.named_parameters(
      ("element_unknown_width", "element", (None,)),
      ("element_unknown_fields", "element", (None, 2)),
      ("field_unknown_fields", "field", (None, 2)),
      ("field_unknown_embedding_dim", "field", (3, None)),
  )
  def test_unknown_general_size(self, mode, general_shape):
    with self.assertRaisesRegex(ValueError, "`general_embeddings`"):
      EPNet(mode=mode)(tf.keras.Input(general_shape), tf.keras.Input((3,)))

  def test_docstring_examples(self):
    results = doctest.testmod(epnet_module, extraglobs={"tf": tf})

    self.assertGreater(results.attempted, 0)
    self.assertEqual(results.failed, 0)


if __name__ == "__main__":
  tf.test.main()
