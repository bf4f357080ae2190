"""Plot and summarize the gate values of a trained PEPNet.

Restores a training run's checkpoint, runs its gates on a data split and writes to
`--output_dir`:

- `epnet_gate_heatmap.png`: mean EPNet gate value per (domain, general field);
- `ppnet_gate_histograms.png`: distribution of PPNet gate values per task and tower
  layer, one outline per domain;
- `gate_values.json`: the numbers behind both plots (the heatmap matrix, quantiles
  of the PPNet gates per task and layer, and their mean per domain).

A model trained without EPNet (or without PPNet gates) gets no heatmap (or no
histograms), and the JSON entry is null.

  python -m trainers.inspect_gates --model_dir=/tmp/pepnet --output_dir=/tmp/gates
"""

import json
import os
from typing import Any, Dict, List

from absl import app
from absl import flags
from absl import logging
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import gates
from pepnet_tf import input as input_lib
from pepnet_tf import training

HEATMAP_FILE = "epnet_gate_heatmap.png"
HISTOGRAM_FILE = "ppnet_gate_histograms.png"
JSON_FILE = "gate_values.json"

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "model_dir of a training run.")
flags.DEFINE_string("output_dir", None, "Where the plots and the JSON are written.")
flags.DEFINE_string("checkpoint", "best", "'best', 'latest', or a checkpoint path.")
flags.DEFINE_enum("split", "test", ["train", "valid", "test"],
                  "Data split whose samples the gates are run on.")
flags.DEFINE_integer("batch_size", 1024, "Rows per batch.")
flags.DEFINE_integer("max_batches", None, "Read at most this many batches; all if unset.")
flags.mark_flags_as_required(["model_dir", "output_dir"])


def ppnet_mean_by_domain(values: gates.GateValues,
                         num_domains: int) -> List[Dict[str, Any]]:
  """Mean PPNet gate value per task, layer and domain, pooled over units.

  Returns:
    One dict per task and layer: `{"task", "layer", "mean_by_domain"}`, with None
    (null in the JSON) for a domain without samples.
  """
  result = []
  for task_index, task in enumerate(values.task_names):
    for layer, layer_values in enumerate(values.ppnet):
      means = []
      for domain in range(num_domains):
        in_domain = values.domain_index == domain
        means.append(float(layer_values[in_domain, task_index, :].mean())
                     if np.any(in_domain) else None)
      result.append({"task": task, "layer": layer, "mean_by_domain": means})
  return result


def inspect(model_dir: str, output_dir: str, checkpoint: str = "best", split: str = "test",
            batch_size: int = 1024, max_batches=None) -> Dict[str, Any]:
  """Write the gate plots and JSON of one training run; return the JSON content."""
  model, feature_config, paths = training.load_trained_model(model_dir, checkpoint)
  files = {"train": paths.train, "valid": paths.valid, "test": paths.test}[split]
  if not files:
    raise ValueError(f"The run in {model_dir!r} has no {split} files.")
  dataset = input_lib.make_dataset(feature_config, files, batch_size, training=False)
  values = gates.collect_gate_values(model, dataset, max_batches=max_batches)
  domain_names = [str(value) for value in feature_config.domain.values]
  os.makedirs(output_dir, exist_ok=True)

  report: Dict[str, Any] = {
      "model_dir": model_dir, "checkpoint": checkpoint, "split": split,
      "num_samples": values.num_samples, "gamma": values.gamma,
      "domain_names": domain_names, "field_names": values.field_names,
      "task_names": values.task_names,
      "samples_per_domain": np.bincount(values.domain_index,
                                        minlength=feature_config.num_domains).tolist(),
      "epnet_mean_by_domain": None, "ppnet_summary": None, "ppnet_mean_by_domain": None,
  }
  if values.epnet is not None:
    means = gates.mean_epnet_gate_by_domain(values, feature_config.num_domains)
    gates.plot_epnet_heatmap(means, values.field_names, domain_names,
                             os.path.join(output_dir, HEATMAP_FILE))
    report["epnet_mean_by_domain"] = [
        [None if np.isnan(value) else float(value) for value in row] for row in means]
  else:
    logging.info("The model has no EPNet, so no heatmap is drawn.")
  if values.ppnet:
    gates.plot_ppnet_histograms(values, os.path.join(output_dir, HISTOGRAM_FILE),
                                domain_names=domain_names)
    report["ppnet_summary"] = gates.ppnet_gate_summary(values)
    report["ppnet_mean_by_domain"] = ppnet_mean_by_domain(values, feature_config.num_domains)
  else:
    logging.info("The model has no PPNet gates, so no histograms are drawn.")

  with open(os.path.join(output_dir, JSON_FILE), "w", encoding="utf-8") as handle:
    json.dump(report, handle, indent=2)
    handle.write("\n")
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  report = inspect(FLAGS.model_dir, FLAGS.output_dir, FLAGS.checkpoint, FLAGS.split,
                   FLAGS.batch_size, FLAGS.max_batches)
  if report["epnet_mean_by_domain"] is not None:
    print("Mean EPNet gate per domain (rows) and field (columns):")
    print("domain  " + "  ".join(f"{name:>10s}" for name in report["field_names"]))
    for name, row in zip(report["domain_names"], report["epnet_mean_by_domain"]):
      print(f"{name:6s}  " + "  ".join(
          "         -" if value is None else f"{value:10.3f}" for value in row))
  if report["ppnet_summary"] is not None:
    print("PPNet gates per task and layer: mean, 5% / 50% / 95% quantiles")
    for row in report["ppnet_summary"]:
      print(f"{row['task']:>10s} layer {row['layer']}: {row['mean']:.3f}  "
            f"{row['q05']:.3f} / {row['q50']:.3f} / {row['q95']:.3f}")
  logging.info("Wrote the gate plots and %s to %s", JSON_FILE, FLAGS.output_dir)


if __name__ == "__main__":
  app.run(main)
