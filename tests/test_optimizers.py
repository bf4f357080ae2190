"""Per-domain and shared Adagrad on embedding rows against a numpy reference."""

from absl.testing import parameterized
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

from pepnet_tf import optimizers

_INITIAL_ACCUMULATOR = 0.1
_EPSILON = 1e-7


def _adagrad_reference(table, gradients, ids, domains, learning_rates, shared):
  """Numpy Adagrad: sum each domain's (or all) row gradients per id, then update."""
  table = table.astype(np.float64).copy()
  accumulators = []
  for group_index, rate in enumerate(learning_rates):
    selected = np.ones_like(domains, dtype=bool) if shared else domains == group_index
    summed = np.zeros_like(table)
    np.add.at(summed, ids[selected], gradients[selected])
    touched = np.unique(ids[selected])
    accumulator = np.full_like(table, _INITIAL_ACCUMULATOR)
    accumulator[touched] += summed[touched] ** 2
    table[touched] -= rate * summed[touched] / np.sqrt(accumulator[touched] + _EPSILON)
    accumulators.append(accumulator)
  return table, accumulators


class DomainAdagradTest(tf.test.TestCase, parameterized.TestCase):

  def _run(self, shared, learning_rates):
    rng = np.random.default_rng(7)
    table_value = rng.normal(size=(6, 3)).astype(np.float32)
    ids = np.array([1, 1, 3, 2, 1, 5, 3], dtype=np.int64)
    domains = np.array([0, 1, 0, 1, 0, 2, 2], dtype=np.int32)
    gradients = rng.normal(size=(7, 3)).astype(np.float32)
    table = tf.Variable(table_value)
    optimizer = optimizers.DomainAdagrad(
        3, learning_rate=learning_rates[0] if shared else learning_rates, shared=shared)
    optimizer.apply([table], [tf.constant(gradients)], [tf.constant(ids)],
                    tf.constant(domains))
    expected_table, expected_accumulators = _adagrad_reference(
        table_value, gradients, ids, domains, learning_rates, shared)
    return table, optimizer, expected_table, expected_accumulators

  @parameterized.named_parameters(
      ("per_domain", False, [0.05, 0.2, 0.01]),
      ("shared", True, [0.05]))
  def test_update_matches_numpy(self, shared, learning_rates):
    table, optimizer, expected_table, expected_accumulators = self._run(shared, learning_rates)
    self.assertAllClose(table.numpy(), expected_table, rtol=1e-5, atol=1e-6)
    for sub_optimizer, expected in zip(optimizer.optimizers, expected_accumulators):
      accumulator = sub_optimizer.variables[1]  # iterations first, then the accumulator
      self.assertAllClose(accumulator.numpy(), expected, rtol=1e-5, atol=1e-6)

  def test_domain_state_untouched_by_other_domains(self):
    _, optimizer, _, _ = self._run(False, [0.05, 0.05, 0.05])
    # Row 5 is touched only by domain 2, rows 0 and 4 by no domain.
    for domain in (0, 1):
      accumulator = optimizer.optimizers[domain].variables[1].numpy()
      self.assertAllEqual(accumulator[5], np.full(3, _INITIAL_ACCUMULATOR, np.float32))
    for domain in range(3):
      accumulator = optimizer.optimizers[domain].variables[1].numpy()
      self.assertAllEqual(accumulator[[0, 4]], np.full((2, 3), _INITIAL_ACCUMULATOR, np.float32))

  def test_learning_rate_count_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "one entry per domain"):
      optimizers.DomainAdagrad(3, learning_rate=[0.1, 0.2])

  def test_learning_rate_list_with_shared_raises(self):
    with self.assertRaisesRegex(ValueError, "shared=False"):
      optimizers.DomainAdagrad(2, learning_rate=[0.1, 0.2], shared=True)

  def test_num_domains_below_one_raises(self):
    with self.assertRaisesRegex(ValueError, "num_domains"):
      optimizers.DomainAdagrad(0)

  def test_schedule_per_domain(self):
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    optimizer = optimizers.DomainAdagrad(2, learning_rate=[schedule, 0.05])
    self.assertAllClose(float(optimizer.optimizers[0].learning_rate), 0.1)
    self.assertAllClose(float(optimizer.optimizers[1].learning_rate), 0.05)

  def test_checkpoint_restores_accumulators(self):
    table, optimizer, _, _ = self._run(False, [0.05, 0.05, 0.05])
    path = tf.train.Checkpoint(table=table, optimizer=optimizer).save(
        self.get_temp_dir() + "/ckpt")
    fresh_table = tf.Variable(tf.zeros_like(table))
    fresh = optimizers.DomainAdagrad(3)
    tf.train.Checkpoint(table=fresh_table, optimizer=fresh).restore(path)
    fresh.apply([fresh_table], [tf.zeros((1, 3))], [tf.constant([0], tf.int64)],
                tf.constant([0]))  # creates the accumulators, which take the saved values
    for saved, restored in zip(optimizer.optimizers, fresh.optimizers):
      self.assertAllEqual(saved.variables[1].numpy(), restored.variables[1].numpy())


if __name__ == "__main__":
  tf.test.main()
