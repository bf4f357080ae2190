"""Tests of pepnet_tf.gates against gates called directly on the model's inputs.

The reference builds the gate inputs here from the embedding tables (numpy row
gathers) and calls each layer's GateNU on them. A numpy forward pass from the
returned gate values must also reproduce the model's predictions, which checks that
the gate inputs are the ones the model uses.
"""

import json
import os
import shutil
import tempfile

from absl.testing import parameterized
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

import synthetic
from pepnet_tf import features as features_lib
from pepnet_tf import gates
from pepnet_tf import input as input_lib
from pepnet_tf import training

_BATCH_SIZE = 200
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (name, TrainConfig overrides, city embedding_dim or None for the config's 4)
_VARIANTS = (
    ("field_mode", dict(epnet_mode="field"), None),
    ("element_mode", dict(epnet_mode="element"), None),
    ("element_mode_unequal_widths", dict(epnet_mode="element"), 6),
    ("no_epnet", dict(use_epnet=False), None),
    ("ppnet_reads_general", dict(ppnet_gate_input="general"), None),
    ("no_ppnet", dict(use_ppnet=False), None),
)


def _gate_reference(gate, inputs):
  """Call `gate` (a GateNU) on float32 `inputs` and return numpy."""
  return gate(tf.constant(inputs, tf.float32)).numpy()


def _model_rows(model, features):
  """Domain indices and embedding rows of `features`, gathered in numpy."""
  embeddings = model.embeddings
  domain_index = embeddings.domain_index(features).numpy()
  ids = {name: value.numpy() for name, value in embeddings.lookup(features).items()}
  rows = {name: embeddings.tables[name].numpy()[row_ids] for name, row_ids in ids.items()}
  return domain_index, rows


def _concat(rows, names):
  return np.concatenate([rows[name] for name in names], axis=1)


def _reference_gates(model, features):
  """EPNet gate output, O_ep and PPNet gate values, computed from the rows."""
  _, rows = _model_rows(model, features)
  config = model.feature_config
  general = _concat(rows, model.general_names)  # (batch_size, general_width)
  extra = []
  epnet_output = None
  o_ep = general
  if model.use_epnet:
    domain_side = _concat(rows, model.domain_side_names)
    epnet_output = _gate_reference(model.epnet.gate,
                                   np.concatenate([domain_side, general], axis=1))
    if model.epnet.mode == "field":
      widths = [config.embedding_dim_of(spec) for spec in config.general]
      o_ep = general * np.repeat(epnet_output, widths, axis=1)
    else:
      o_ep = general * epnet_output
  else:
    extra += model.domain_side_names

  ppnet = []
  if model.use_ppnet:
    if model.ppnet_gate_input == "prior":
      source = _concat(rows, model.prior_names)
      if getattr(model, "prior_in_towers", False):
        extra += model.prior_names
    else:
      source = general
      extra += model.prior_names
    tower_input = np.concatenate([o_ep] + [rows[name] for name in extra], axis=1)
    gate_input = np.concatenate([source, tower_input], axis=1)
    for gate, kernel in zip(model.ppnet.gates, model.ppnet.kernels):
      ppnet.append(_gate_reference(gate, gate_input).reshape(
          -1, len(model.task_names), kernel.shape[1]))
  return epnet_output, ppnet


def _predict_from_gates(model, features, values):
  """Numpy forward pass of the towers and heads that uses the gate values `values`."""
  domain_index, rows = _model_rows(model, features)
  config = model.feature_config
  general = _concat(rows, model.general_names).astype(np.float64)
  extra = []
  if model.use_epnet:
    widths = [config.embedding_dim_of(spec) for spec in config.general]
    if model.epnet.mode == "field":
      o_ep = general * np.repeat(values.epnet_output, widths, axis=1)
    else:
      o_ep = general * values.epnet_output
  else:
    o_ep = general
    extra += model.domain_side_names
  if (not (model.use_ppnet and model.ppnet_gate_input == "prior")
      or getattr(model, "prior_in_towers", False)):
    extra += model.prior_names
  tower_input = np.concatenate([o_ep] + [rows[name] for name in extra], axis=1)

  predictions = {}
  for task_index, task in enumerate(model.task_names):
    hidden = tower_input
    for layer, (kernel, bias) in enumerate(zip(model.ppnet.kernels, model.ppnet.biases)):
      if values.ppnet:
        hidden = hidden * values.ppnet[layer][:, task_index, :]
      hidden = np.maximum(hidden @ kernel.numpy()[task_index] + bias.numpy()[task_index], 0.0)
    head_kernel = model.heads.kernels[task].numpy()[domain_index]
    head_bias = model.heads.biases[task].numpy()[domain_index]
    logit = np.sum(hidden * head_kernel, axis=1) + head_bias
    predictions[task] = 1.0 / (1.0 + np.exp(-logit))
  return predictions


class GatesTest(tf.test.TestCase, parameterized.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.data_dir = tempfile.mkdtemp(prefix="pepnet_gates_")
    cls.paths = synthetic.write_dataset(os.path.join(cls.data_dir, "data"), "csv")
    cls.feature_config = features_lib.load(cls.paths["feature_config"])
    dataset = input_lib.make_dataset(cls.feature_config, [cls.paths["test"]], _BATCH_SIZE,
                                     training=False)
    cls.features = next(iter(dataset))[0]

    # One short training run, restored the way a user restores a trained model.
    cls.model_dir = os.path.join(cls.data_dir, "run")
    training.train(training.TrainConfig(
        model_dir=cls.model_dir, feature_config=cls.paths["feature_config"],
        train_files=[cls.paths["train"]], valid_files=[cls.paths["valid"]],
        test_files=[], batch_size=64, epochs=2, hidden_units=[8, 4],
        epnet_mode="element", shuffle_buffer=256, export=False, verbose=0))
    cls.trained, _, _ = training.load_trained_model(cls.model_dir)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.data_dir, ignore_errors=True)
    super().tearDownClass()

  def _model(self, overrides, city_dim=None):
    raw = json.load(open(self.paths["feature_config"]))
    if city_dim is not None:
      for feature in raw["features"]:
        if feature["name"] == "city":
          feature["embedding_dim"] = city_dim
    feature_config = features_lib.from_dict(raw)
    config = training.TrainConfig(model_dir="", feature_config=self.paths["feature_config"],
                                  hidden_units=[8, 4], **overrides)
    tf.keras.utils.set_random_seed(1)
    model = training.build_model(config, feature_config)
    model(self.features)
    # Biases away from zero, so that a swapped or missing input changes every gate.
    for variable in model.trainable_variables:
      if "bias" in variable.name:
        variable.assign(tf.random.normal(variable.shape, stddev=0.5, seed=2))
    return model

  @parameterized.named_parameters(*_VARIANTS)
  def test_gates_match_direct_gate_calls(self, overrides, city_dim):
    model = self._model(overrides, city_dim)
    values = gates.compute_gate_values(model, self.features)
    epnet_output, ppnet = _reference_gates(model, self.features)

    self.assertEqual(values.num_samples, _BATCH_SIZE)
    self.assertEqual(values.field_names, ["age", "city"])
    self.assertEqual(values.task_names, ["click", "like"])
    if epnet_output is None:
      self.assertIsNone(values.epnet)
      self.assertIsNone(values.epnet_output)
    else:
      self.assertAllClose(values.epnet_output, epnet_output, atol=1e-6)
    self.assertLen(values.ppnet, len(ppnet))
    for layer, expected in enumerate(ppnet):
      self.assertAllClose(values.ppnet[layer], expected, atol=1e-6, msg=f"layer {layer}")

  @parameterized.named_parameters(*_VARIANTS)
  def test_gates_reproduce_model_predictions(self, overrides, city_dim):
    model = self._model(overrides, city_dim)
    values = gates.compute_gate_values(model, self.features)
    expected = model(self.features, training=False)
    predictions = _predict_from_gates(model, self.features, values)
    for task in ("click", "like"):
      self.assertAllClose(predictions[task], expected[task].numpy(), atol=1e-5, msg=task)

  def test_field_mode_has_one_value_per_field(self):
    model = self._model(dict(epnet_mode="field"))
    values = gates.compute_gate_values(model, self.features)
    self.assertEqual(values.epnet_output.shape, (_BATCH_SIZE, 2))
    self.assertAllEqual(values.epnet, values.epnet_output)

  def test_element_mode_averages_field_units(self):
    model = self._model(dict(epnet_mode="element"), city_dim=6)
    values = gates.compute_gate_values(model, self.features)
    # age has 4 units, city 6.
    self.assertEqual(values.epnet_output.shape, (_BATCH_SIZE, 10))
    self.assertAllClose(values.epnet[:, 0], values.epnet_output[:, :4].mean(axis=1))
    self.assertAllClose(values.epnet[:, 1], values.epnet_output[:, 4:].mean(axis=1))

  def test_ppnet_shapes_per_layer(self):
    model = self._model(dict(epnet_mode="field"))
    values = gates.compute_gate_values(model, self.features)
    # Tower input: 2 general fields x 4 units, plus 2 prior fields x 4 units when the
    # prior ids join the towers. The second layer's input is the first's width, 8.
    input_width = 16 if getattr(model, "prior_in_towers", False) else 8
    self.assertEqual([layer.shape for layer in values.ppnet],
                     [(_BATCH_SIZE, 2, input_width), (_BATCH_SIZE, 2, 8)])

  def test_values_lie_between_zero_and_gamma(self):
    values = gates.compute_gate_values(self.trained, self.features)
    self.assertEqual(values.gamma, 2.0)
    for array in [values.epnet_output] + values.ppnet:
      self.assertTrue(np.all(array > 0.0))
      self.assertTrue(np.all(array < 2.0))

  def test_trained_model_gates_match_direct_calls(self):
    values = gates.compute_gate_values(self.trained, self.features)
    epnet_output, ppnet = _reference_gates(self.trained, self.features)
    self.assertAllClose(values.epnet_output, epnet_output, atol=1e-6)
    for layer, expected in enumerate(ppnet):
      self.assertAllClose(values.ppnet[layer], expected, atol=1e-6)

  def test_collect_concatenates_batches(self):
    dataset = input_lib.make_dataset(self.feature_config, [self.paths["test"]], 64,
                                     training=False)
    collected = gates.collect_gate_values(self.trained, dataset, max_batches=2)
    self.assertEqual(collected.num_samples, 128)
    # Feature dicts work as well as (features, labels) pairs.
    feature_batches = [features for features, _ in dataset.take(2)]
    expected = [gates.compute_gate_values(self.trained, batch) for batch in feature_batches]
    self.assertAllClose(collected.epnet,
                        np.concatenate([part.epnet for part in expected]))
    self.assertAllEqual(collected.domain_index,
                        np.concatenate([part.domain_index for part in expected]))
    for layer in range(2):
      self.assertAllClose(collected.ppnet[layer],
                          np.concatenate([part.ppnet[layer] for part in expected]))

  def test_collect_rejects_bad_arguments(self):
    with self.assertRaisesRegex(ValueError, "max_batches"):
      gates.collect_gate_values(self.trained, [], max_batches=0)
    with self.assertRaisesRegex(ValueError, "no batch"):
      gates.collect_gate_values(self.trained, [])

  def test_mean_by_domain_by_hand(self):
    values = gates.compute_gate_values(self.trained, self.features)
    means = gates.mean_epnet_gate_by_domain(values, 3)
    self.assertEqual(means.shape, (3, 2))
    for domain in range(3):
      rows = values.epnet[values.domain_index == domain]
      self.assertNotEmpty(rows)
      self.assertAllClose(means[domain], rows.mean(axis=0))

  def test_mean_by_domain_without_samples_is_nan(self):
    pages = self.features["page"].numpy()
    keep = pages != b"feed"
    subset = {name: tf.boolean_mask(value, keep) for name, value in self.features.items()}
    means = gates.mean_epnet_gate_by_domain(gates.compute_gate_values(self.trained, subset), 3)
    self.assertTrue(np.all(np.isfinite(means[:2])))
    self.assertTrue(np.all(np.isnan(means[2])))

  def test_without_epnet_or_ppnet_raises(self):
    no_epnet = gates.compute_gate_values(self._model(dict(use_epnet=False)), self.features)
    with self.assertRaisesRegex(ValueError, "without EPNet"):
      gates.mean_epnet_gate_by_domain(no_epnet, 3)
    no_ppnet = gates.compute_gate_values(self._model(dict(use_ppnet=False)), self.features)
    self.assertEqual(no_ppnet.ppnet, [])
    self.assertEqual(gates.ppnet_gate_summary(no_ppnet), [])
    with self.assertRaisesRegex(ValueError, "without PPNet"):
      gates.plot_ppnet_histograms(no_ppnet)

  def test_unbuilt_model_raises(self):
    model = training.build_model(
        training.TrainConfig(model_dir="", feature_config=self.paths["feature_config"]),
        self.feature_config)
    with self.assertRaisesRegex(ValueError, "no weights"):
      gates.compute_gate_values(model, self.features)
    with self.assertRaisesRegex(ValueError, "PEPNet"):
      gates.compute_gate_values(tf.keras.Sequential(), self.features)

  def test_summary_by_hand(self):
    values = gates.compute_gate_values(self.trained, self.features)
    summary = gates.ppnet_gate_summary(values)
    self.assertEqual([(row["task"], row["layer"]) for row in summary],
                     [("click", 0), ("click", 1), ("like", 0), ("like", 1)])
    pooled = values.ppnet[1][:, 1, :].ravel()  # like, layer 1
    self.assertAllClose(summary[3]["mean"], pooled.mean())
    self.assertAllClose(summary[3]["q95"], np.quantile(pooled, 0.95))
    self.assertLessEqual(summary[3]["q05"], summary[3]["q50"])

  def test_score_in_every_domain(self):
    scores = gates.score_in_every_domain(self.trained, self.features)
    own = self.trained(self.features, training=False)
    domain_index = gates.compute_gate_values(self.trained, self.features).domain_index
    for task in ("click", "like"):
      self.assertEqual(scores[task].shape, (_BATCH_SIZE, 3))
      # The column of a sample's own domain is its ordinary prediction.
      self.assertAllClose(scores[task][np.arange(_BATCH_SIZE), domain_index],
                          own[task].numpy(), atol=1e-6)
    # Each domain has its own head, so the same row scores differently per domain.
    self.assertGreater(np.abs(scores["click"][:, 0] - scores["click"][:, 1]).max(), 1e-4)

  def test_with_domain_rejects_unknown_value(self):
    with self.assertRaisesRegex(ValueError, "domain values"):
      gates.with_domain(self.features, self.feature_config, "video")
    changed = gates.with_domain(self.features, self.feature_config, "search")
    self.assertAllEqual(changed["page"], [b"search"] * _BATCH_SIZE)
    self.assertAllEqual(changed["user_id"], self.features["user_id"])

  def test_plots_write_png(self):
    values = gates.compute_gate_values(self.trained, self.features)
    means = gates.mean_epnet_gate_by_domain(values, 3)
    directory = self.get_temp_dir()
    heatmap_path = os.path.join(directory, "plots", "epnet.png")
    figure = gates.plot_epnet_heatmap(means, values.field_names, synthetic.DOMAINS,
                                      heatmap_path)
    # The heatmap and its colorbar.
    self.assertLen(figure.axes, 2)
    histogram_path = os.path.join(directory, "ppnet.png")
    figure = gates.plot_ppnet_histograms(values, histogram_path,
                                         domain_names=synthetic.DOMAINS)
    self.assertLen(figure.axes, 4)  # 2 tasks x 2 layers
    for path in (heatmap_path, histogram_path):
      with open(path, "rb") as handle:
        self.assertEqual(handle.read(8), _PNG_SIGNATURE, path)
      self.assertGreater(os.path.getsize(path), 5000, path)

  def test_heatmap_rejects_wrong_shape(self):
    with self.assertRaisesRegex(ValueError, "shape"):
      gates.plot_epnet_heatmap(np.ones((2, 2)), ["age", "city"], synthetic.DOMAINS)


if __name__ == "__main__":
  tf.test.main()
