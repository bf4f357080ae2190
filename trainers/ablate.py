"""Ablations of PEPNet's components, several seeds each, in one command.

Variants (each is the default `TrainConfig` with the listed changes):

- `no_gates`: `use_epnet=False, use_ppnet=False`, plain towers with domain heads.
- `epnet_only`: `use_ppnet=False`.
- `ppnet_only`: `use_epnet=False`.
- `pepnet`: the defaults, EPNet and PPNet.
- `prior_gates_only`: `prior_in_towers=False`, the prior id embeddings reach the
  towers only through PPNet's gates.
- `ppnet_general_gate`: `ppnet_gate_input="general"`, PPNet's gates read the general
  embeddings instead of the prior ids.
- `pepnet_shared_adagrad`: `embedding_optimizer="shared"`, one Adagrad for all domains.

Every (variant, seed) run trains in `output_dir/<variant>/seed_<seed>` and writes
`ablation_metrics.json` there: the exact test metrics of `training.train` plus GAUC
per task and domain. A run whose metrics file exists is skipped, so rerunning the
command resumes, and an interrupted run resumes from its last checkpoint. At the end
the command writes the mean and standard deviation over seeds of every metric to
`output_dir/ablation.json`, markdown tables to `output_dir/ablation.md` and a bar
chart of the test AUC per task and variant to `--chart` (default
`output_dir/ablation_auc.png`).

MovieLens-100K (prepared on first use):
  python -m trainers.ablate --output_dir=/tmp/ablation --seeds=2023,1,2

Any other dataset:
  python -m trainers.ablate --output_dir=/tmp/ablation --feature_config=cfg.json \
      --train=train.csv --valid=valid.csv --test=test.csv --variants=no_gates,pepnet
"""

import json
import os
import statistics
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import input as input_lib
from pepnet_tf import metrics as metrics_lib
from pepnet_tf import training

# Variant name -> TrainConfig fields that differ from the defaults, in table order.
VARIANTS: Dict[str, Dict[str, Any]] = {
    "no_gates": {"use_epnet": False, "use_ppnet": False},
    "epnet_only": {"use_ppnet": False},
    "ppnet_only": {"use_epnet": False},
    "pepnet": {},
    "prior_gates_only": {"prior_in_towers": False},
    "ppnet_general_gate": {"ppnet_gate_input": "general"},
    "pepnet_shared_adagrad": {"embedding_optimizer": "shared"},
}
METRICS_FILE = "ablation_metrics.json"
SUMMARY_FILE = "ablation.json"
TABLE_FILE = "ablation.md"

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Parent directory of every run's model_dir and "
                    "of the summary files.")
flags.DEFINE_list("variants", list(VARIANTS), f"Variants to run, from {list(VARIANTS)}.")
flags.DEFINE_list("seeds", ["2023", "1", "2"], "Seeds; every variant trains once per seed.")
flags.DEFINE_string("chart", None, "Path of the AUC bar chart PNG; defaults to "
                    "output_dir/ablation_auc.png.")
flags.DEFINE_string("data_dir", None, "Where MovieLens-100K is prepared; defaults to "
                    "$PEPNET_TF_DATA_DIR or ~/.cache/pepnet_tf.")
flags.DEFINE_string("feature_config", None, "Feature config JSON of another dataset.")
flags.DEFINE_list("train", [], "Training files or glob patterns (with --feature_config).")
flags.DEFINE_list("valid", [], "Validation files or glob patterns (with --feature_config).")
flags.DEFINE_list("test", [], "Test files or glob patterns (with --feature_config).")
flags.DEFINE_integer("epochs", None, "Maximum epochs per run; the TrainConfig default "
                     "if unset.")
flags.DEFINE_integer("batch_size", None, "Batch size; the TrainConfig default if unset.")
flags.mark_flag_as_required("output_dir")


def run_dir(output_dir: str, variant: str, seed: int) -> str:
  return os.path.join(output_dir, variant, f"seed_{seed}")


def run_one(output_dir: str, variant: str, seed: int,
            base: Mapping[str, Any]) -> Dict[str, Any]:
  """Train one (variant, seed) unless its metrics file exists; return its record.

  Args:
    output_dir: parent of the run's model_dir.
    variant: a key of `VARIANTS`.
    seed: the run's seed.
    base: TrainConfig fields shared by every run (data, epochs, batch size).

  Returns:
    `{"variant", "seed", "seconds", "best_epoch", "metrics"}`, as stored in the
    run's metrics file.
  """
  model_dir = run_dir(output_dir, variant, seed)
  metrics_path = os.path.join(model_dir, METRICS_FILE)
  if os.path.exists(metrics_path):
    logging.info("Skipping %s seed %d: %s exists", variant, seed, metrics_path)
    with open(metrics_path, encoding="utf-8") as handle:
      return json.load(handle)

  logging.info("Training %s seed %d in %s", variant, seed, model_dir)
  config = training.TrainConfig(model_dir=model_dir, seed=seed, export=False, verbose=0,
                                **base, **VARIANTS[variant])
  start = time.perf_counter()
  result = training.train(config)
  seconds = time.perf_counter() - start
  metrics = dict(result["test_metrics"])
  metrics.update(gauc_by_domain(model_dir))
  record = {"variant": variant, "seed": seed, "seconds": seconds,
            "best_epoch": result["best_epoch"], "metrics": metrics}
  # Written last and renamed into place, so the file exists only for a finished run.
  temporary = metrics_path + ".tmp"
  with open(temporary, "w", encoding="utf-8") as handle:
    json.dump(record, handle, indent=2, sort_keys=True)
  os.replace(temporary, metrics_path)
  logging.info("Finished %s seed %d in %.0f s", variant, seed, seconds)
  return record


def gauc_by_domain(model_dir: str) -> Dict[str, float]:
  """Test GAUC per task and domain of the best checkpoint in `model_dir`.

  Returns:
    `{"gauc/<task>/domain_<k>": value}`; empty when the config names no user id
    feature or no test files.
  """
  model, feature_config, paths = training.load_trained_model(model_dir)
  if feature_config.user_id_feature is None or not paths.test:
    return {}
  dataset = input_lib.make_dataset(feature_config, paths.test, 4096, training=False)
  scorer = training.model_scorer(model)
  labels = {name: [] for name in feature_config.task_names}
  scores = {name: [] for name in feature_config.task_names}
  domains, users = [], []
  for features, batch_labels in dataset:
    outputs = scorer(features)
    for name in feature_config.task_names:
      labels[name].append(batch_labels[name].numpy())
      scores[name].append(outputs[name].numpy())
    domains.append(model.embeddings.domain_index(features).numpy())
    users.append(features[feature_config.user_id_feature].numpy())
  domain_index = np.concatenate(domains)
  user_ids = np.concatenate(users)

  results = {}
  for name in feature_config.task_names:
    label = np.concatenate(labels[name])
    score = np.concatenate(scores[name])
    present = label >= 0
    for domain in range(feature_config.num_domains):
      rows = present & (domain_index == domain)
      results[f"gauc/{name}/domain_{domain}"] = metrics_lib.gauc(
          label[rows], score[rows], user_ids[rows])
  return results


def summarize(records: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
  """Mean, sample standard deviation and count over seeds, per variant and metric.

  Returns:
    `{variant: {metric: {"mean", "std", "n"}}}`; `std` is 0 for a single seed, and
    NaN values (e.g. AUC of a domain without positives) are left out.
  """
  by_variant: Dict[str, List[Mapping[str, Any]]] = {}
  for record in records:
    by_variant.setdefault(record["variant"], []).append(record)
  summary = {}
  for variant, runs in by_variant.items():
    keys = sorted({key for run in runs for key in run["metrics"]})
    summary[variant] = {}
    for key in keys + ["seconds"]:
      values = [run[key] if key == "seconds" else run["metrics"].get(key) for run in runs]
      values = [float(value) for value in values
                if value is not None and not np.isnan(value)]
      if not values:
        continue
      summary[variant][key] = {
          "mean": statistics.mean(values),
          "std": statistics.stdev(values) if len(values) > 1 else 0.0,
          "n": len(values)}
  return summary


def format_tables(summary: Mapping[str, Mapping[str, Mapping[str, float]]],
                  task_names: Sequence[str], num_domains: int) -> str:
  """Markdown tables of test AUC and GAUC, per task and per (task, domain)."""

  def cell(stats: Optional[Mapping[str, float]]) -> str:
    if stats is None:
      return "-"
    return f"{stats['mean']:.4f} ± {stats['std']:.4f}"

  variants = list(summary)
  seeds = max((stats["n"] for metrics in summary.values() for stats in metrics.values()),
              default=0)
  lines = [f"Test metrics, mean ± sample standard deviation over seeds (n = {seeds}).", ""]
  header = ["variant"] + [f"{metric} {task}" for task in task_names
                          for metric in ("AUC", "GAUC")] + ["seconds/run"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for variant in variants:
    row = [variant]
    for task in task_names:
      row += [cell(summary[variant].get(f"auc/{task}")),
              cell(summary[variant].get(f"gauc/{task}"))]
    seconds = summary[variant].get("seconds")
    row.append("-" if seconds is None else f"{seconds['mean']:.0f}")
    lines.append("| " + " | ".join(row) + " |")

  for metric, title in (("auc", "AUC"), ("gauc", "GAUC")):
    lines += ["", f"{title} per domain:", ""]
    header = ["variant"] + [f"{task} d{domain}" for task in task_names
                            for domain in range(num_domains)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant in variants:
      row = [variant] + [cell(summary[variant].get(f"{metric}/{task}/domain_{domain}"))
                         for task in task_names for domain in range(num_domains)]
      lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines) + "\n"


def plot_auc(summary: Mapping[str, Mapping[str, Mapping[str, float]]],
             task_names: Sequence[str], path: str) -> None:
  """Write a bar chart of test AUC per task (groups) and variant (bars), std as error bars."""
  # Figure without pyplot: no global backend state, no display needed.
  from matplotlib import figure as figure_lib  # pylint: disable=g-import-not-at-top

  variants = list(summary)
  figure = figure_lib.Figure(figsize=(2.0 + 1.6 * len(task_names) * len(variants) / 3, 4.0),
                             layout="constrained")
  axes = figure.add_subplot()
  width = 0.8 / len(variants)
  low, high = 1.0, 0.0
  for index, variant in enumerate(variants):
    means = [summary[variant].get(f"auc/{task}", {}).get("mean", np.nan) for task in task_names]
    stds = [summary[variant].get(f"auc/{task}", {}).get("std", 0.0) for task in task_names]
    positions = np.arange(len(task_names)) + (index - (len(variants) - 1) / 2) * width
    axes.bar(positions, means, width, yerr=stds, capsize=3, label=variant)
    finite = [mean for mean in means if np.isfinite(mean)]
    if finite:
      low, high = min(low, min(finite)), max(high, max(finite))
  axes.set_xticks(range(len(task_names)), labels=list(task_names))
  if high > low:
    margin = max(0.01, (high - low) * 0.5)
    axes.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
  axes.set_ylabel("test AUC (mean over seeds, bars: std)")
  axes.set_title("Ablation: test AUC per task and variant")
  axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  figure.savefig(path, dpi=100)


def run_ablation(output_dir: str, variants: Sequence[str], seeds: Sequence[int],
                 base: Mapping[str, Any], chart_path: Optional[str] = None
                 ) -> Dict[str, Any]:
  """Run every (variant, seed) that has no metrics file, then write the summaries.

  Returns:
    `{"summary", "runs", "json_path", "table_path", "chart_path"}`.
  """
  unknown = [variant for variant in variants if variant not in VARIANTS]
  if unknown:
    raise ValueError(f"Unknown variants {unknown}. Known variants: {list(VARIANTS)}")
  if not seeds:
    raise ValueError("At least one seed is needed.")
  os.makedirs(output_dir, exist_ok=True)
  records = [run_one(output_dir, variant, seed, base)
             for variant in variants for seed in seeds]

  # The feature config that every run saved beside its checkpoints.
  from pepnet_tf import features as features_lib  # pylint: disable=g-import-not-at-top
  feature_config = features_lib.load(
      os.path.join(run_dir(output_dir, variants[0], seeds[0]), "feature_config.json"))
  summary = summarize(records)
  json_path = os.path.join(output_dir, SUMMARY_FILE)
  with open(json_path, "w", encoding="utf-8") as handle:
    json.dump({"variants": {name: VARIANTS[name] for name in variants},
               "seeds": list(seeds), "summary": summary, "runs": records},
              handle, indent=2, sort_keys=True)
  table_path = os.path.join(output_dir, TABLE_FILE)
  with open(table_path, "w", encoding="utf-8") as handle:
    handle.write(format_tables(summary, feature_config.task_names,
                               feature_config.num_domains))
  chart_path = chart_path or os.path.join(output_dir, "ablation_auc.png")
  plot_auc(summary, feature_config.task_names, chart_path)
  return {"summary": summary, "runs": records, "json_path": json_path,
          "table_path": table_path, "chart_path": chart_path}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    seeds = [int(seed) for seed in FLAGS.seeds]
  except ValueError as error:
    raise app.UsageError(f"--seeds must be integers. Received: {FLAGS.seeds}") from error
  unknown = [variant for variant in FLAGS.variants if variant not in VARIANTS]
  if unknown:
    raise app.UsageError(f"Unknown --variants {unknown}. Known: {list(VARIANTS)}")

  base: Dict[str, Any] = {"data_dir": FLAGS.data_dir}
  if FLAGS.feature_config:
    base.update(feature_config=FLAGS.feature_config, train_files=FLAGS.train,
                valid_files=FLAGS.valid, test_files=FLAGS.test)
  if FLAGS.epochs is not None:
    base["epochs"] = FLAGS.epochs
  if FLAGS.batch_size is not None:
    base["batch_size"] = FLAGS.batch_size

  result = run_ablation(FLAGS.output_dir, FLAGS.variants, seeds, base, FLAGS.chart)
  with open(result["table_path"], encoding="utf-8") as handle:
    print(handle.read())
  logging.info("Wrote %s, %s and %s", result["json_path"], result["table_path"],
               result["chart_path"])


if __name__ == "__main__":
  app.run(main)
