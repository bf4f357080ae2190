"""Tests of DomainHeads: values, per-domain gradients, weights, serialization, validation."""

import doctest
import os

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from pepnet_tf.layers import domain_heads as domain_heads_module
from pepnet_tf.layers.domain_heads import DomainHeads

_HIDDEN_DIM = 3
_DOMAIN_INDEX = np.array([0, 2, 1, 2, 0, 1], np.int32)


def domain_heads_reference(heads, hidden, domain_index):
  """Compute every task's logits in float64 numpy, one sample at a time."""
  logits = {}
  for name in heads.task_names:
    kernel = np.asarray(heads.kernels[name], np.float64)
    bias = np.asarray(heads.biases[name], np.float64)
    logits[name] = np.array([
        hidden[name][sample].astype(np.float64) @ kernel[domain] + bias[domain]
        for sample, domain in enumerate(domain_index)])
  return logits


class DomainHeadsTest(tf.test.TestCase, parameterized.TestCase):

  def setUp(self):
    super().setUp()
    tf.keras.utils.set_random_seed(19)
    self.rng = np.random.default_rng(19)

  def random_hidden(self, task_names, batch_size=len(_DOMAIN_INDEX)):
    return {name: self.rng.normal(size=(batch_size, _HIDDEN_DIM)).astype(np.float32)
            for name in task_names}

  @parameterized.named_parameters(
      ("one_task_three_domains", ["click"], 3, _DOMAIN_INDEX),
      ("two_tasks_three_domains", ["click", "like"], 3, _DOMAIN_INDEX),
      ("one_domain", ["click", "like"], 1, np.zeros(6, np.int32)),
      ("int64_index", ["click"], 3, _DOMAIN_INDEX.astype(np.int64)),
      ("column_index", ["click", "like"], 3, _DOMAIN_INDEX[:, np.newaxis]),
  )
  def test_values_match_numpy(self, task_names, num_domains, domain_index):
    heads = DomainHeads(num_domains=num_domains, task_names=task_names,
                        bias_initializer=tf.keras.initializers.RandomNormal(seed=3))
    hidden = self.random_hidden(task_names)

    logits = heads(hidden, domain_index)

    expected = domain_heads_reference(heads, hidden, domain_index.reshape(-1))
    self.assertEqual(sorted(logits), sorted(task_names))
    for name in task_names:
      self.assertAllClose(expected[name], logits[name], rtol=1e-6, atol=1e-6, msg=name)

  def test_values_with_constant_weights(self):
    heads = DomainHeads(num_domains=2, task_names=["click"],
                        kernel_initializer="ones",
                        bias_initializer=tf.keras.initializers.Constant(0.5))
    heads({"click": tf.zeros((1, 2))}, tf.constant([0]))
    heads.set_weights([np.array([[1.0, 2.0], [-1.0, 0.0]], np.float32),
                       np.array([0.5, -3.0], np.float32)])

    logits = heads({"click": tf.constant([[1.0, 1.0], [1.0, 1.0], [2.0, 5.0]])},
                   tf.constant([0, 1, 1]))

    # Sample 0 uses domain 0: 1 + 2 + 0.5. Samples 1 and 2 use domain 1: -1 - 3 and -2 - 3.
    self.assertAllClose([3.5, -4.0, -5.0], logits["click"])

  @parameterized.named_parameters(
      ("domain_zero", 0),
      ("domain_one", 1),
      ("domain_two", 2),
  )
  def test_gradient_stays_in_domain(self, domain):
    heads = DomainHeads(num_domains=3, task_names=["click", "like"])
    hidden = self.random_hidden(["click", "like"])
    in_domain = _DOMAIN_INDEX == domain

    # A mixed batch, with the loss summed over the samples of `domain` only.
    with tf.GradientTape() as tape:
      logits = heads(hidden, _DOMAIN_INDEX)
      loss = tf.add_n([tf.reduce_sum(tf.boolean_mask(logits[name], in_domain))
                       for name in ("click", "like")])
    variables = [heads.kernels["click"], heads.biases["click"],
                 heads.kernels["like"], heads.biases["like"]]
    gradients = tape.gradient(loss, variables)

    for variable, gradient in zip(variables, gradients):
      gradient = tf.convert_to_tensor(gradient)  # IndexedSlices from tf.gather
      others = np.delete(gradient.numpy(), domain, axis=0)
      self.assertAllEqual(np.zeros_like(others), others, msg=variable.name)
      self.assertGreater(np.abs(gradient.numpy()[domain]).max(), 0.0, msg=variable.name)

  @parameterized.named_parameters(
      ("domain_zero", 0),
      ("domain_two", 2),
  )
  def test_gradient_single_domain_batch(self, domain):
    heads = DomainHeads(num_domains=3, task_names=["click"])
    hidden = self.random_hidden(["click"], batch_size=4)

    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(heads(hidden, tf.fill([4], domain))["click"])
    kernel_gradient, bias_gradient = [
        tf.convert_to_tensor(gradient).numpy()
        for gradient in tape.gradient(loss, [heads.kernels["click"],
                                             heads.biases["click"]])]

    self.assertAllEqual(np.zeros((2, _HIDDEN_DIM)), np.delete(kernel_gradient, domain, 0))
    self.assertAllEqual(np.zeros(2), np.delete(bias_gradient, domain, 0))
    self.assertAllClose(hidden["click"].sum(axis=0), kernel_gradient[domain])
    self.assertAllClose(4.0, bias_gradient[domain])

  @parameterized.named_parameters(
      ("one_task", ["click"], 3),
      ("three_tasks", ["click", "like", "follow"], 3),
      ("one_domain", ["click", "like"], 1),
  )
  def test_weights_and_shape(self, task_names, num_domains):
    heads = DomainHeads(num_domains=num_domains, task_names=task_names)

    logits = heads(self.random_hidden(task_names, batch_size=4),
                   np.zeros(4, np.int32))

    for name in task_names:
      self.assertEqual(logits[name].shape, (4,))
    # Per task: a (num_domains, hidden_dim) kernel and a (num_domains,) bias.
    expected = len(task_names) * (num_domains * _HIDDEN_DIM + num_domains)
    self.assertEqual(heads.count_params(), expected)

  def test_config_round_trip(self):
    heads = DomainHeads(num_domains=3, task_names=["click", "like"],
                        bias_initializer="random_normal", kernel_regularizer="l2")
    hidden = self.random_hidden(["click", "like"])
    expected = heads(hidden, _DOMAIN_INDEX)

    restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(heads))
    restored(hidden, _DOMAIN_INDEX)
    restored.set_weights(heads.get_weights())

    self.assertIsInstance(restored, DomainHeads)
    self.assertEqual(restored.get_config(), heads.get_config())
    logits = restored(hidden, _DOMAIN_INDEX)
    for name in ("click", "like"):
      self.assertAllEqual(expected[name], logits[name], msg=name)

  def test_saved_model_round_trip(self):
    hidden_inputs = {name: tf.keras.Input((_HIDDEN_DIM,), name=name)
                     for name in ("click", "like")}
    domain_input = tf.keras.Input((), dtype=tf.int32, name="domain")
    heads = DomainHeads(num_domains=3, task_names=["click", "like"],
                        bias_initializer="random_normal")
    model = tf.keras.Model({**hidden_inputs, "domain": domain_input},
                           heads(hidden_inputs, domain_input))
    batch = {**self.random_hidden(["click", "like"]), "domain": _DOMAIN_INDEX}
    expected = model(batch)
    path = os.path.join(self.get_temp_dir(), "model")

    model.save(path, save_format="tf")
    restored = tf.keras.models.load_model(path)

    logits = restored(batch)
    for name in ("click", "like"):
      self.assertAllEqual(expected[name], logits[name], msg=name)

  @parameterized.named_parameters(
      ("zero", 0),
      ("negative", -1),
      ("float", 2.0),
  )
  def test_invalid_num_domains(self, num_domains):
    with self.assertRaisesRegex(ValueError, "`num_domains` must be an integer >= 1"):
      DomainHeads(num_domains=num_domains, task_names=["click"])

  def test_empty_task_names(self):
    with self.assertRaisesRegex(ValueError, "`task_names` must be a non-empty list"):
      DomainHeads(num_domains=2, task_names=[])

  def test_duplicate_task_names(self):
    with self.assertRaisesRegex(ValueError, "`task_names` must be unique"):
      DomainHeads(num_domains=2, task_names=["click", "click"])

  def test_missing_task(self):
    heads = DomainHeads(num_domains=2, task_names=["click", "like"])

    with self.assertRaisesRegex(ValueError, r"missing tasks \['like'\]"):
      heads({"click": tf.ones((2, 3))}, tf.constant([0, 1]))

  def test_inputs_not_a_dict(self):
    heads = DomainHeads(num_domains=2, task_names=["click"])

    with self.assertRaisesRegex(ValueError, "expects a dict from task name"):
      heads(tf.ones((2, 3)), tf.constant([0, 1]))

  @parameterized.named_parameters(
      ("one_d", (2,)),
      ("three_d", (2, 3, 1)),
      ("four_d", (2, 3, 1, 1)),
  )
  def test_hidden_rank(self, hidden_shape):
    heads = DomainHeads(num_domains=2, task_names=["click"])

    with self.assertRaisesRegex(ValueError, "input for task 'click' must be 2-D"):
      heads({"click": tf.ones(hidden_shape)}, tf.constant([0, 1]))

  @parameterized.named_parameters(
      ("scalar", 0),
      ("two_columns", [[0, 1], [1, 0]]),
      ("three_d", [[[0]], [[1]]]),
  )
  def test_domain_index_rank(self, domain_index):
    heads = DomainHeads(num_domains=2, task_names=["click"])

    with self.assertRaisesRegex(ValueError, "`domain_index` must be 1-D"):
      heads({"click": tf.ones((2, 3))}, tf.constant(domain_index))

  @parameterized.named_parameters(
      ("float", np.array([0.0, 1.0], np.float32)),
      ("string", np.array(["0", "1"])),
  )
  def test_domain_index_not_integer(self, domain_index):
    heads = DomainHeads(num_domains=2, task_names=["click"])

    with self.assertRaisesRegex(ValueError, "`domain_index` must be an integer tensor"):
      heads({"click": tf.ones((2, 3))}, domain_index)

  def test_docstring_examples(self):
    results = doctest.testmod(domain_heads_module, extraglobs={"tf": tf})

    self.assertGreater(results.attempted, 0)
    self.assertEqual(results.failed, 0)


if __name__ == "__main__":
  tf.test.main()
