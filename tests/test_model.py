"""PEPNet model: loss masking, domain routing, ablation switches and the train step."""

from absl.testing import parameterized
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

from pepnet_tf import features
from pepnet_tf import optimizers
from pepnet_tf.model import PEPNet


def _config(**overrides):
  raw = {
      "domain": {"feature": "page", "values": ["home", "search", "feed"]},
      "embedding_dim": 4,
      "features": [
          {"name": "user_id", "group": "prior", "vocabulary": list(range(20))},
          {"name": "item_id", "group": "prior", "hash_buckets": 16},
          {"name": "age", "group": "general", "dtype": "float32", "boundaries": [20, 40]},
          {"name": "city", "group": "general", "dtype": "string", "vocabulary": ["a", "b"]},
          {"name": "item_rate", "group": "domain_side", "dtype": "float32",
           "boundaries": [0.5]},
          {"name": "page", "group": "domain", "dtype": "string"},
          {"name": "click", "group": "label"},
          {"name": "like", "group": "label", "weight": 0.5},
      ],
  }
  raw.update(overrides)
  return features.from_dict(raw)


def _batch(size=12, seed=0, pages=("home", "search", "feed")):
  rng = np.random.default_rng(seed)
  batch = {
      "user_id": tf.constant(rng.integers(0, 25, size), tf.int64),
      "item_id": tf.constant(rng.integers(0, 100, size), tf.int64),
      "age": tf.constant(rng.uniform(10, 60, size), tf.float32),
      "city": tf.constant(rng.choice(["a", "b", "c"], size)),
      "item_rate": tf.constant(rng.random(size), tf.float32),
      "page": tf.constant(rng.choice(list(pages), size)),
  }
  labels = {
      "click": tf.constant(rng.integers(0, 2, size), tf.float32),
      "like": tf.constant(rng.integers(-1, 2, size), tf.float32),
  }
  return batch, labels


class PEPNetTest(tf.test.TestCase, parameterized.TestCase):

  def test_outputs_are_probabilities_per_task(self):
    model = PEPNet(_config(), hidden_units=[8, 4])
    batch, _ = _batch()
    outputs = model(batch)
    self.assertEqual(sorted(outputs), ["click", "like"])
    self.assertEqual(outputs["click"].shape, (12,))
    self.assertTrue(np.all((outputs["like"].numpy() > 0) & (outputs["like"].numpy() < 1)))

  def test_loss_masks_missing_labels(self):
    model = PEPNet(_config(), hidden_units=[8])
    logits = {"click": tf.constant([0.3, -1.2, 2.0]), "like": tf.constant([1.0, 0.5, -0.4])}
    labels = {"click": tf.constant([1.0, 0.0, 1.0]), "like": tf.constant([-1.0, 1.0, 0.0])}

    def bce(label, logit):
      probability = 1 / (1 + np.exp(-logit))
      return -(label * np.log(probability) + (1 - label) * np.log(1 - probability))

    click = np.mean([bce(1, 0.3), bce(0, -1.2), bce(1, 2.0)])
    like = (bce(1, 0.5) + bce(0, -0.4)) / 3  # the missing label adds zero loss
    expected = click + 0.5 * like
    self.assertAllClose(model.compute_pepnet_loss(labels, logits), expected, rtol=1e-6)

  def test_sample_uses_its_own_domain_head(self):
    model = PEPNet(_config(), hidden_units=[8], use_epnet=False)
    batch, _ = _batch(size=4, pages=("home",))
    model(batch)
    before = model(batch)["click"].numpy()
    # Changing another domain's head leaves these home samples unchanged.
    kernel = model.heads.kernels["click"]
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[1], [2]], tf.ones((2, 8)) * 5.0))
    self.assertAllEqual(model(batch)["click"].numpy(), before)
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0]], tf.ones((1, 8)) * 5.0))
    self.assertNotAllClose(model(batch)["click"].numpy(), before)

  def test_unknown_domain_fails_naming_value(self):
    model = PEPNet(_config(), hidden_units=[8])
    batch, _ = _batch(size=3)
    batch["page"] = tf.constant(["home", "video", "feed"])
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "video"):
      model(batch)

  def test_unknown_domain_takes_fallback(self):
    config = _config(domain={"feature": "page", "values": ["home", "search", "feed"],
                             "fallback": "feed"})
    model = PEPNet(config, hidden_units=[8])
    batch, _ = _batch(size=3)
    unknown = dict(batch, page=tf.constant(["video"] * 3))
    fallback = dict(batch, page=tf.constant(["feed"] * 3))
    self.assertAllEqual(model(unknown)["click"], model(fallback)["click"])

  @parameterized.named_parameters(
      ("full", True, True, "prior"),
      ("no_gates", False, False, "prior"),
      ("epnet_only", True, False, "prior"),
      ("ppnet_only", False, True, "prior"),
      ("ppnet_generic_gate", True, True, "general"))
  def test_ablation_variants_train(self, use_epnet, use_ppnet, gate_input):
    model = PEPNet(_config(), hidden_units=[8, 4], use_epnet=use_epnet,
                   use_ppnet=use_ppnet, ppnet_gate_input=gate_input,
                   embedding_optimizer=optimizers.DomainAdagrad(3))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    batch, labels = _batch(size=32)
    history = model.fit(tf.data.Dataset.from_tensors((batch, labels)).repeat(3), verbose=0)
    self.assertTrue(np.isfinite(history.history["loss"][-1]))
    self.assertEqual(model.epnet is not None, use_epnet)
    self.assertEqual(bool(model.ppnet.gates), use_ppnet)

  def test_train_step_leaves_absent_domain_untouched(self):
    model = PEPNet(_config(), hidden_units=[8],
                   embedding_optimizer=optimizers.DomainAdagrad(3))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    batch, labels = _batch(size=16, pages=("home", "search"))
    model(batch)
    feed_head = model.heads.kernels["click"].numpy()[2].copy()
    feed_row = model.embeddings.tables["page"].numpy()[2].copy()
    home_head = model.heads.kernels["click"].numpy()[0].copy()
    model.train_on_batch(batch, labels)
    self.assertAllEqual(model.heads.kernels["click"].numpy()[2], feed_head)
    self.assertAllEqual(model.embeddings.tables["page"].numpy()[2], feed_row)
    self.assertNotAllClose(model.heads.kernels["click"].numpy()[0], home_head)
    # The feed domain's Adagrad saw only zero-row updates: its accumulators are initial.
    feed_optimizer = model.embedding_optimizer.optimizers[2]
    for accumulator in feed_optimizer.variables[1:]:
      self.assertAllClose(accumulator.numpy(), np.full(accumulator.shape, 0.1))

  def test_tables_use_embedding_optimizer_only(self):
    model = PEPNet(_config(), hidden_units=[8],
                   embedding_optimizer=optimizers.DomainAdagrad(3))
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    batch, labels = _batch(size=16)
    model(batch)
    model.train_on_batch(batch, labels)
    adam_refs = {var.ref() for var in model.optimizer.variables}
    self.assertLen(model.embedding_tables, 6)  # 5 features and the domain id
    for table in model.embedding_tables:
      self.assertNotIn(table.ref(), adam_refs)
    self.assertLen(model.dense_variables,
                   len(model.trainable_variables) - len(model.embedding_tables))

  def test_parameter_counts(self):
    model = PEPNet(_config(), hidden_units=[8], gate_hidden_units=5, prior_in_towers=False)
    batch, _ = _batch()
    model(batch)
    counts = model.parameter_counts()
    # Tables: user 20+1, item 16, age 3, city 2+1, item_rate 2, page 3 rows of 4.
    self.assertEqual(counts["embeddings"], (21 + 16 + 3 + 3 + 2 + 3) * 4)
    # EPNet gate: input domain side 8 + general 8, hidden 5, output 8.
    self.assertEqual(counts["epnet_gate"], 16 * 5 + 5 + 5 * 8 + 8)
    # PPNet gate: input prior 8 + o_ep 8, hidden 5, output 2 tasks x 8.
    self.assertEqual(counts["ppnet_gates"], 16 * 5 + 5 + 5 * 16 + 16)
    self.assertEqual(counts["towers"], 2 * (8 * 8 + 8))
    self.assertEqual(counts["heads"], 2 * (3 * 8 + 3))
    trainable = sum(int(np.prod(var.shape)) for var in model.trainable_variables)
    self.assertEqual(sum(counts.values()), trainable)

  def test_prior_in_towers_widens_tower_input(self):
    model = PEPNet(_config(), hidden_units=[8], gate_hidden_units=5)
    batch, _ = _batch()
    model(batch)
    counts = model.parameter_counts()
    # Tower input: EPNet output 8 plus the prior ids 8, for each of 2 tasks.
    self.assertEqual(counts["towers"], 2 * (16 * 8 + 8))
    # The PPNet gate scales the wider input: 2 tasks x 16 outputs.
    self.assertEqual(counts["ppnet_gates"], (8 + 16) * 5 + 5 + 5 * 32 + 32)

  @parameterized.named_parameters(
      ("loss", "loss", ["loss"]),
      ("task", "task", ["auc/click", "auc/like", "auc_mean", "logloss/click",
                        "logloss/like", "loss"]),
      ("all", "all", ["auc/click", "auc/click/domain_0", "auc/click/domain_1",
                      "auc/click/domain_2", "auc/like", "auc/like/domain_0",
                      "auc/like/domain_1", "auc/like/domain_2", "auc_mean",
                      "logloss/click", "logloss/like", "loss"]))
  def test_train_metrics_logged(self, train_metrics, expected_keys):
    model = PEPNet(_config(), hidden_units=[8], train_metrics=train_metrics)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.01))
    data = tf.data.Dataset.from_tensors(_batch(size=32))

    history = model.fit(data.repeat(2), validation_data=data, verbose=0)

    train_keys = sorted(key for key in history.history if not key.startswith("val_"))
    self.assertEqual(train_keys, expected_keys)
    # Validation updates every metric whatever train_metrics is.
    self.assertIn("val_auc/like/domain_2", history.history)
    self.assertIn("val_auc_mean", history.history)
    self.assertEqual(sorted(model.evaluate(data, return_dict=True, verbose=0)),
                     ["auc/click", "auc/click/domain_0", "auc/click/domain_1",
                      "auc/click/domain_2", "auc/like", "auc/like/domain_0",
                      "auc/like/domain_1", "auc/like/domain_2", "auc_mean",
                      "logloss/click", "logloss/like", "loss"])

  def test_invalid_train_metrics_raises(self):
    with self.assertRaisesRegex(ValueError, "`train_metrics` must be one of"):
      PEPNet(_config(), train_metrics="domain")

  def test_invalid_gate_input_raises(self):
    with self.assertRaisesRegex(ValueError, "ppnet_gate_input"):
      PEPNet(_config(), ppnet_gate_input="user")

  def test_field_mode_needs_equal_widths(self):
    config = _config()
    config.features[2].embedding_dim = 6
    with self.assertRaisesRegex(ValueError, "same embedding_dim"):
      PEPNet(config, epnet_mode="field")

  def test_optimizer_domain_count_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "domains"):
      PEPNet(_config(), embedding_optimizer=optimizers.DomainAdagrad(2))


if __name__ == "__main__":
  tf.test.main()
