"""Gate values of a trained PEPNet, their summaries and plots.

EPNet has one Gate NU whose output scales the general embeddings, and PPNet one Gate
NU per tower layer whose output scales that layer's input for every task. Gate values
lie in `(0, gamma)`, and 1 leaves a signal unchanged. This module runs a model's
embeddings and gates on raw features and returns the gate outputs:

- EPNet: `(batch_size, num_fields)`, one value per general feature field. In "field"
  mode that is the gate output itself. In "element" mode it is the mean of the gate
  over each field's embedding units.
- PPNet: per tower layer `(batch_size, num_tasks, layer_input_width)`, the layer's
  gate output split per task as the tower applies it.

Example:

    model, feature_config, paths = training.load_trained_model("runs/movielens")
    dataset = input_lib.make_dataset(feature_config, paths.test, 1024, training=False)
    values = gates.collect_gate_values(model, dataset, max_batches=10)
    means = gates.mean_epnet_gate_by_domain(values, feature_config.num_domains)
    domain_names = [str(value) for value in feature_config.domain.values]
    gates.plot_epnet_heatmap(means, values.field_names, domain_names, "epnet.png")
    gates.plot_ppnet_histograms(values, "ppnet.png")

The plots need matplotlib, which is a test dependency (requirements-dev.txt) and
not a runtime one. They draw on the Agg canvas without pyplot, so they change no
global backend state and work without a display.
"""

import dataclasses
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from pepnet_tf import features as features_lib
from pepnet_tf.model import PEPNet

# Quantiles reported per (task, layer) by `ppnet_gate_summary`.
SUMMARY_QUANTILES = (0.05, 0.5, 0.95)


@dataclasses.dataclass
class GateValues:
  """Gate outputs of PEPNet for a set of samples, as numpy arrays.

  Attributes:
    domain_index: `(batch_size,)` int32, the domain index of every sample.
    field_names: the general feature names, the columns of `epnet`.
    task_names: the task names, the second axis of every `ppnet` array.
    epnet: `(batch_size, num_fields)` EPNet gate value per general field, or None
      when the model has no EPNet.
    epnet_output: the EPNet Gate NU output as it is, `(batch_size, num_fields)` in
      "field" mode or `(batch_size, general_width)` in "element" mode, or None
      without EPNet.
    ppnet: one `(batch_size, num_tasks, layer_input_width)` array per tower layer,
      the output of that layer's Gate NU. Empty when PPNet has no gates.
    gamma: upper bound of the gate values.
  """

  domain_index: np.ndarray
  field_names: List[str]
  task_names: List[str]
  epnet: Optional[np.ndarray]
  epnet_output: Optional[np.ndarray]
  ppnet: List[np.ndarray]
  gamma: float

  @property
  def num_samples(self) -> int:
    return int(self.domain_index.shape[0])


def compute_gate_values(model: PEPNet, features: Mapping[str, Any]) -> GateValues:
  """Run the embeddings and gates of `model` on one batch of raw features.

  The gate inputs are built as `PEPNet.forward` builds them in inference mode
  (no dropout). tests/test_gates.py recomputes the model's predictions from these
  values, so a change of `PEPNet.forward` that this function does not follow fails
  there.

  Args:
    model: a PEPNet with weights, e.g. from `training.load_trained_model`.
    features: dict from input feature name to a `(batch_size,)` tensor or array of
      raw values, as for `model(features)`. Labels and other keys are ignored.

  Returns:
    The `GateValues` of the batch.

  Raises:
    ValueError: `model` is not a PEPNet or has no weights yet, or a feature is
      missing.
  """
  _check_model(model)
  features = {name: tf.convert_to_tensor(value) for name, value in features.items()}
  embeddings = model.embeddings
  domain_index = embeddings.domain_index(features)
  # feature name -> (batch_size, embedding_dim)
  rows = embeddings.gather(embeddings.lookup(features, domain_index))

  if model.stack_general:
    # num_fields x (batch_size, embedding_dim) -> (batch_size, num_fields, embedding_dim)
    general = tf.stack([rows[name] for name in model.general_names], axis=1)
  else:
    # (batch_size, sum of the general fields' embedding_dim)
    general = tf.concat([rows[name] for name in model.general_names], axis=-1)
  general_flat = _flatten(general)

  extra_names = []
  epnet_output = None
  if model.use_epnet:
    # (batch_size, domain_width)
    domain_side = tf.concat([rows[name] for name in model.domain_side_names], axis=-1)
    # (batch_size, domain_width + general_width), the input EPNet gives its gate
    epnet_input = tf.concat([domain_side, general_flat], axis=-1)
    # (batch_size, num_fields) in "field" mode, (batch_size, general_width) otherwise
    epnet_output = model.epnet.gate(epnet_input)
    o_ep = model.epnet(general, domain_side)
  else:
    o_ep = general
    extra_names += model.domain_side_names

  ppnet_values = []
  if model.use_ppnet:
    if model.ppnet_gate_input == "prior":
      # (batch_size, prior_width)
      gate_source = tf.concat([rows[name] for name in model.prior_names], axis=-1)
      if _prior_in_towers(model):
        extra_names += model.prior_names
    else:
      gate_source = general_flat
      extra_names += model.prior_names
    tower_input = _flatten(o_ep)
    if extra_names:
      # (batch_size, o_ep_width + extra_width)
      tower_input = tf.concat(
          [tower_input] + [rows[name] for name in extra_names], axis=-1)
    # (batch_size, gate_source_width + tower_input_width), the input of every PPNet gate
    ppnet_input = tf.concat([gate_source, tower_input], axis=-1)
    num_tasks = len(model.task_names)
    for gate, kernel in zip(model.ppnet.gates, model.ppnet.kernels):
      # (batch_size, num_tasks * input_width) -> (batch_size, num_tasks, input_width)
      values = tf.reshape(gate(ppnet_input), [-1, num_tasks, kernel.shape[1]])
      ppnet_values.append(values.numpy())

  epnet_fields = None
  if epnet_output is not None:
    epnet_fields = _field_means(model, epnet_output.numpy())
  return GateValues(
      domain_index=domain_index.numpy(),
      field_names=list(model.general_names),
      task_names=list(model.task_names),
      epnet=epnet_fields,
      epnet_output=None if epnet_output is None else epnet_output.numpy(),
      ppnet=ppnet_values,
      gamma=_gamma(model))


def collect_gate_values(model: PEPNet, batches: Iterable[Any],
                        max_batches: Optional[int] = None) -> GateValues:
  """Compute the gate values of every batch of `batches` and concatenate them.

  Args:
    model: a PEPNet with weights.
    batches: a `tf.data.Dataset` or iterable of `(features, labels)` pairs, as
      `pepnet_tf.input.make_dataset` yields them, or of feature dicts.
    max_batches: the maximum number of batches read, or None to read all.

  Returns:
    The `GateValues` of all samples read, in order.

  Raises:
    ValueError: `batches` yields nothing, or `max_batches` is not positive.
  """
  if max_batches is not None and max_batches < 1:
    raise ValueError(f"`max_batches` must be >= 1 or None. Received: {max_batches!r}")
  parts = []
  for index, batch in enumerate(batches):
    if max_batches is not None and index >= max_batches:
      break
    features = batch[0] if isinstance(batch, (tuple, list)) else batch
    parts.append(compute_gate_values(model, features))
  if not parts:
    raise ValueError("`batches` yielded no batch, so there are no gate values.")
  first = parts[0]
  return GateValues(
      domain_index=np.concatenate([part.domain_index for part in parts]),
      field_names=first.field_names,
      task_names=first.task_names,
      epnet=None if first.epnet is None else np.concatenate(
          [part.epnet for part in parts]),
      epnet_output=None if first.epnet_output is None else np.concatenate(
          [part.epnet_output for part in parts]),
      ppnet=[np.concatenate([part.ppnet[layer] for part in parts])
             for layer in range(len(first.ppnet))],
      gamma=first.gamma)


def mean_epnet_gate_by_domain(values: GateValues, num_domains: int) -> np.ndarray:
  """Mean EPNet gate value per (domain, general field).

  Returns:
    `(num_domains, num_fields)` float64. The row of a domain without samples is NaN.

  Raises:
    ValueError: the model had no EPNet.
  """
  if values.epnet is None:
    raise ValueError("These gate values come from a model without EPNet (use_epnet=False).")
  means = np.full((num_domains, len(values.field_names)), np.nan)
  for domain in range(num_domains):
    in_domain = values.domain_index == domain
    if np.any(in_domain):
      means[domain] = values.epnet[in_domain].mean(axis=0)
  return means


def ppnet_gate_summary(values: GateValues) -> List[Dict[str, Any]]:
  """Statistics of the PPNet gate values per (task, layer), pooled over samples and units.

  Returns:
    One dict per task and layer with keys `task`, `layer`, `mean`, `std`, `min`,
    `max` and `q05`, `q50`, `q95` (the `SUMMARY_QUANTILES`), or an empty list
    without PPNet gates.
  """
  summary = []
  for task_index, task in enumerate(values.task_names):
    for layer, layer_values in enumerate(values.ppnet):
      pooled = layer_values[:, task_index, :].ravel()
      row = {"task": task, "layer": layer, "mean": float(pooled.mean()),
             "std": float(pooled.std()), "min": float(pooled.min()),
             "max": float(pooled.max())}
      for quantile, value in zip(SUMMARY_QUANTILES,
                                 np.quantile(pooled, SUMMARY_QUANTILES)):
        row[f"q{round(quantile * 100):02d}"] = float(value)
      summary.append(row)
  return summary


def with_domain(features: Mapping[str, Any], config: features_lib.FeatureConfig,
                domain_value: Any) -> Dict[str, Any]:
  """Copy `features` with every sample's domain feature set to `domain_value`.

  Only the domain feature changes. Domain-side features (for example per-domain
  statistics) keep the values of the sample's own domain.

  Raises:
    ValueError: `domain_value` is not one of `config.domain.values`.
  """
  if domain_value not in config.domain.values:
    raise ValueError(
        f"`domain_value` must be one of the domain values {config.domain.values}. "
        f"Received: {domain_value!r}")
  name = config.domain.feature
  column = tf.convert_to_tensor(features[name])
  changed = dict(features)
  changed[name] = tf.fill(tf.shape(column), tf.constant(domain_value, dtype=column.dtype))
  return changed


def score_in_every_domain(model: PEPNet, features: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Score every sample as if it came from each domain in turn (see `with_domain`).

  Returns:
    A dict from task name to a `(batch_size, num_domains)` array of probabilities.
    Column `k` is the prediction with the domain feature set to
    `config.domain.values[k]`.
  """
  _check_model(model)
  config = model.feature_config
  columns = {name: [] for name in model.task_names}
  for domain_value in config.domain.values:
    outputs = model(with_domain(features, config, domain_value), training=False)
    for name in model.task_names:
      columns[name].append(np.asarray(outputs[name]))
  return {name: np.stack(values, axis=1) for name, values in columns.items()}


# Plots.


def plot_epnet_heatmap(means: np.ndarray, field_names: Sequence[str],
                       domain_names: Sequence[str], path: Optional[str] = None,
                       title: str = "Mean EPNet gate per domain and field"):
  """Draw the mean EPNet gate per (domain, field) as a heatmap with the values written in.

  The color scale is symmetric around 1, the neutral gate value, and reaches as far
  as the value farthest from 1: red fields are scaled up in that domain and blue
  ones scaled down. NaN cells (domains without samples) stay blank.

  Args:
    means: `(num_domains, num_fields)`, e.g. from `mean_epnet_gate_by_domain`.
    field_names: the column labels, `num_fields` names.
    domain_names: the row labels, `num_domains` names.
    path: the PNG file to write, or None to write nothing.
    title: the figure title.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  means = np.asarray(means, dtype=np.float64)
  if means.shape != (len(domain_names), len(field_names)):
    raise ValueError(
        f"`means` must have shape (len(domain_names), len(field_names)) = "
        f"({len(domain_names)}, {len(field_names)}). Received: shape={means.shape}")
  figure_lib, colors = _matplotlib()
  figure = figure_lib.Figure(
      figsize=(1.0 + 0.9 * len(field_names), 1.6 + 0.5 * len(domain_names)),
      layout="constrained")
  axes = figure.add_subplot()
  # Half-width of the color scale. The floor keeps a constant heatmap drawable.
  reach = max(float(np.nanmax(np.abs(means - 1.0), initial=0.0)), 1e-3)
  norm = colors.Normalize(vmin=1.0 - reach, vmax=1.0 + reach)
  image = axes.imshow(means, cmap="RdBu_r", norm=norm, aspect="auto")
  axes.set_xticks(range(len(field_names)), labels=list(field_names), rotation=45, ha="right")
  axes.set_yticks(range(len(domain_names)), labels=list(domain_names))
  for row in range(means.shape[0]):
    for column in range(means.shape[1]):
      value = means[row, column]
      if np.isfinite(value):
        # White text on the darkest cells, black elsewhere.
        color = "white" if abs(value - 1.0) > 0.6 * reach else "black"
        axes.text(column, row, f"{value:.3f}", ha="center", va="center", fontsize=8,
                  color=color)
  axes.set_title(title)
  figure.colorbar(image, ax=axes, label="gate value (1 = unchanged)")
  _save(figure, path)
  return figure


def plot_ppnet_histograms(values: GateValues, path: Optional[str] = None, bins: int = 40,
                          domain_names: Optional[Sequence[str]] = None):
  """Draw histograms of the PPNet gate values, one panel per task (row) and layer (column).

  Each panel pools the values of all samples and all units of that layer's input.

  Args:
    values: gate values of a model with PPNet gates.
    path: the PNG file to write, or None to write nothing.
    bins: number of bins, spread over the range of all panels' values so that the
      panels share one x axis.
    domain_names: when given, one outline histogram per domain (densities) instead
      of one filled histogram of all samples.

  Returns:
    The `matplotlib.figure.Figure`.

  Raises:
    ValueError: the model had no PPNet gates.
  """
  if not values.ppnet:
    raise ValueError("These gate values come from a model without PPNet gates "
                     "(use_ppnet=False).")
  figure_lib, _ = _matplotlib()
  num_tasks, num_layers = len(values.task_names), len(values.ppnet)
  figure = figure_lib.Figure(figsize=(3.2 * num_layers + 0.5, 2.4 * num_tasks + 0.5),
                             layout="constrained")
  grid = figure.subplots(num_tasks, num_layers, squeeze=False, sharex=True)
  low = min(float(layer_values.min()) for layer_values in values.ppnet)
  high = max(float(layer_values.max()) for layer_values in values.ppnet)
  # Gates of an untrained model can all sit within a hair of 1: keep the bins readable.
  margin = max(high - low, 1e-3) * 0.02
  edges = np.linspace(low - margin, high + margin, bins + 1)
  for task_index, task in enumerate(values.task_names):
    for layer, layer_values in enumerate(values.ppnet):
      axes = grid[task_index][layer]
      task_values = layer_values[:, task_index, :]
      if domain_names is None:
        axes.hist(task_values.ravel(), bins=edges, color="tab:blue")
      else:
        for domain, name in enumerate(domain_names):
          in_domain = values.domain_index == domain
          if np.any(in_domain):
            axes.hist(task_values[in_domain].ravel(), bins=edges, density=True,
                      histtype="step", label=str(name))
        if task_index == 0 and layer == 0:
          axes.legend(fontsize=7)
      axes.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
      axes.set_title(f"{task}, layer {layer} (input width {task_values.shape[1]})",
                     fontsize=9)
      if task_index == num_tasks - 1:
        axes.set_xlabel("gate value")
  figure.suptitle("PPNet gate values per task and tower layer")
  _save(figure, path)
  return figure


# Helpers.


def _check_model(model: Any) -> None:
  if not isinstance(model, PEPNet):
    raise ValueError(f"`model` must be a pepnet_tf PEPNet. Received: {type(model).__name__}")
  if not model.built:
    raise ValueError(
        "The model has no weights yet. Restore it with training.load_trained_model, or "
        "call it once on a batch of features.")


def _prior_in_towers(model: PEPNet) -> bool:
  # A PEPNet without the `prior_in_towers` attribute keeps the prior ids out of the
  # tower input.
  return bool(getattr(model, "prior_in_towers", False))


def _gamma(model: PEPNet) -> float:
  if model.epnet is not None:
    return model.epnet.gamma
  return model.ppnet.gamma


def _flatten(tensor: tf.Tensor) -> tf.Tensor:
  # (batch_size, num_fields, embedding_dim) or (batch_size, width) -> (batch_size, width)
  width = int(np.prod(tensor.shape[1:]))
  return tf.reshape(tensor, [-1, width])


def _field_means(model: PEPNet, epnet_output: np.ndarray) -> np.ndarray:
  """Reduce the EPNet gate output to `(batch_size, num_fields)`."""
  if model.epnet.mode == "field":
    return epnet_output
  # "element" mode: (batch_size, general_width), the fields' units one after another.
  widths = [model.feature_config.embedding_dim_of(spec) for spec in model.feature_config.general]
  parts = np.split(epnet_output, np.cumsum(widths)[:-1], axis=1)
  # num_fields x (batch_size, embedding_dim) -> (batch_size, num_fields)
  return np.stack([part.mean(axis=1) for part in parts], axis=1)


def _matplotlib():
  try:
    from matplotlib import colors  # pylint: disable=g-import-not-at-top
    from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ImportError(
        "The gate plots need matplotlib: pip install -r requirements-dev.txt") from error
  return figure_lib, colors


def _save(figure, path: Optional[str]) -> None:
  if path is None:
    return
  # pylint: disable-next=g-import-not-at-top
  from matplotlib.backends.backend_agg import FigureCanvasAgg

  FigureCanvasAgg(figure)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  figure.savefig(path, dpi=110)
