"""Train a sequence of passes, each warm-started from the one before.

A pass layout (written by `python -m data.movielens passes` or
`python -m data.kuairand prepare --split=passes`) is a directory with:

    feature_config.json    one config for every pass
    passes.json            {"passes": [{"name": "pass_001", "start": ..., "end": ...,
                            "train_rows": ..., "valid_rows": ..., "test_rows": ...}]}
    pass_001/train*.tfrecord, valid*.tfrecord, test*.tfrecord
    pass_002/...

`run_passes` trains pass k in `root/<name>` with `warm_start_from` set to pass k-1's
directory, admits vocabularies over the last `admission_window` passes, and
collects one summary row per pass: table sizes, admitted, carried and evicted ids,
OOV shares and the test metrics. Every finished pass leaves `pass_summary.json`
in its directory, so a rerun skips it and continues with the next.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
import tensorflow as tf

from pepnet_tf import admission as admission_lib
from pepnet_tf import features as features_lib
from pepnet_tf import training

MANIFEST = "passes.json"
SUMMARY_FILE = "pass_summary.json"
REPORT_JSON = "passes_report.json"
REPORT_MARKDOWN = "passes_report.md"
SETTINGS_FILE = "passes_settings.json"
# Fields of TrainConfig that each pass sets itself, or that do not change results.
_PER_PASS_FIELDS = ("model_dir", "feature_config", "train_files", "valid_files",
                    "test_files", "warm_start_from", "verbose")


def read_manifest(passes_dir: str) -> List[Dict[str, Any]]:
  """Return the pass entries of a pass layout, in training order."""
  path = os.path.join(passes_dir, MANIFEST)
  manifest = admission_lib.read_json(path)
  if manifest is None:
    raise FileNotFoundError(
        f"{path} not found: {passes_dir!r} is not a pass layout. Build one with "
        "`python -m data.movielens passes --out=DIR`.")
  entries = manifest.get("passes")
  if not entries:
    raise ValueError(f"{path} lists no passes.")
  return entries


def pass_files(passes_dir: str, name: str, split: str) -> List[str]:
  """Return the files of one split of one pass; raise FileNotFoundError if none."""
  pattern = os.path.join(passes_dir, name, f"{split}*.tfrecord")
  files = sorted(tf.io.gfile.glob(pattern))
  if not files:
    raise FileNotFoundError(f"No {split} files match {pattern}.")
  return files


def run_passes(template: training.TrainConfig, passes_dir: str, root: str,
               warm_start: bool = True, first: int = 1,
               last: Optional[int] = None) -> List[Dict[str, Any]]:
  """Train passes `first` .. `last` (1-based, inclusive) and return their summaries.

  Args:
    template: the training options of every pass; its `model_dir`, data files,
      `feature_config` and `warm_start_from` are replaced per pass.
    passes_dir: the pass layout.
    root: directory of the runs, one subdirectory per pass.
    warm_start: seed pass k from pass k-1 (True), or train every pass from scratch
      (False), the baseline that shows what warm starts bring.
    first: first pass to train. When it is above 1 and `warm_start` is true,
      pass `first - 1` must have been trained in `root` already.
    last: last pass to train; None trains to the end.

  Returns:
    One summary per trained pass, see `summarize`. The summaries of every finished
    pass in `root` are also written to `root/passes_report.json` and, as tables,
    to `root/passes_report.md`.
  """
  entries = read_manifest(passes_dir)
  last = len(entries) if last is None else last
  if not 1 <= first <= last <= len(entries):
    raise ValueError(f"Passes {first}..{last} are outside 1..{len(entries)} of {passes_dir}.")
  feature_config = os.path.join(passes_dir, "feature_config.json")
  _check_settings(root, template, passes_dir, warm_start)
  summaries = []
  for number in range(first, last + 1):
    entry = entries[number - 1]
    model_dir = os.path.join(root, entry["name"])
    summary_path = os.path.join(model_dir, SUMMARY_FILE)
    finished = admission_lib.read_json(summary_path)
    if finished is not None:
      summaries.append(finished)
      logging.info("Pass %s is done already (%s).", entry["name"], summary_path)
      continue
    previous = None
    if warm_start and number > 1:
      previous = os.path.join(root, entries[number - 2]["name"])
      if not tf.io.gfile.exists(os.path.join(previous, SUMMARY_FILE)):
        unfinished = next(
            index for index in range(1, number)
            if not tf.io.gfile.exists(os.path.join(
                root, entries[index - 1]["name"], SUMMARY_FILE)))
        raise FileNotFoundError(
            f"Pass {entry['name']} warm-starts from {previous}, which has not finished. "
            f"Start from pass {unfinished} ({entries[unfinished - 1]['name']}), the first "
            "unfinished one, or train every pass alone (warm_start=False).")
    config = dataclasses.replace(
        template, model_dir=model_dir, feature_config=feature_config,
        train_files=pass_files(passes_dir, entry["name"], "train"),
        valid_files=pass_files(passes_dir, entry["name"], "valid"),
        test_files=pass_files(passes_dir, entry["name"], "test"),
        warm_start_from=previous)
    logging.info("Training pass %s (%d of %d) in %s", entry["name"], number, len(entries),
                 model_dir)
    result = training.train(config)
    summary = summarize(entry, result, features_lib.load(
        os.path.join(model_dir, "feature_config.json")))
    admission_lib.write_json(summary_path, summary, indent=2)
    summaries.append(summary)
  write_report(root, [entry["name"] for entry in entries])
  return summaries


def _check_settings(root: str, template: training.TrainConfig, passes_dir: str,
                    warm_start: bool) -> None:
  """Record the run's settings in `root`, or raise if earlier passes used others.

  A rerun skips finished passes, so passes trained with other settings would
  silently mix into the report.
  """
  settings = {name: value for name, value in dataclasses.asdict(template).items()
              if name not in _PER_PASS_FIELDS}
  settings.update(passes_dir=os.path.abspath(passes_dir), warm_start=warm_start)
  path = os.path.join(root, SETTINGS_FILE)
  saved = admission_lib.read_json(path)
  if saved is not None:
    changed = {name: (saved.get(name), value) for name, value in settings.items()
               if saved.get(name) != value}
    if changed:
      raise ValueError(
          f"{root} contains passes trained with other settings: "
          + "; ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changed.items())
          + ". Use another model_dir to compare settings.")
    return
  admission_lib.write_json(path, settings, indent=2)


def summarize(entry: Mapping[str, Any], result: Mapping[str, Any],
              feature_config: features_lib.FeatureConfig) -> Dict[str, Any]:
  """Build one pass's summary: its period, rows, tables and test metrics."""
  report = result["admission"]
  tables = {}
  for name, size in report["table_sizes"].items():
    feature = report["features"].get(name)
    row = {"table_size": size}
    if feature is not None:
      row.update({key: feature[key] for key in (
          "vocabulary_size", "admitted", "carried", "evicted", "oov_share_train",
          "oov_share_test")})
    tables[name] = row
  return {
      "name": entry["name"],
      "start": entry.get("start"),
      "end": entry.get("end"),
      "train_rows": entry.get("train_rows"),
      "test_rows": entry.get("test_rows"),
      "warm_start_from": report.get("previous_dir"),
      "best_epoch": result.get("best_epoch"),
      "prior_features": [spec.name for spec in feature_config.prior],
      "tasks": feature_config.task_names,
      "tables": tables,
      "test_metrics": result.get("test_metrics", {}),
  }


def write_report(root: str, names: Sequence[str]) -> Optional[str]:
  """Collect the summaries of the finished passes in `root` into the two report files.

  Returns:
    The path of the Markdown report, or None when no pass has finished.
  """
  summaries = []
  for name in names:
    path = os.path.join(root, name, SUMMARY_FILE)
    summary = admission_lib.read_json(path)
    if summary is not None:
      summaries.append(summary)
  if not summaries:
    return None
  admission_lib.write_json(os.path.join(root, REPORT_JSON), summaries, indent=2)
  markdown_path = os.path.join(root, REPORT_MARKDOWN)
  with tf.io.gfile.GFile(markdown_path, "w") as handle:
    handle.write(format_markdown(summaries))
  return markdown_path


def format_markdown(summaries: Sequence[Mapping[str, Any]]) -> str:
  """Format the summaries as two Markdown tables: test metrics, then the id tables.

  In the second table each prior feature shows `table size: carried kept +admitted
  -evicted` (the size alone for a fixed table), and its share of test rows that hit
  an OOV bucket.
  """
  tasks = summaries[0]["tasks"]
  priors = summaries[0]["prior_features"]
  header = (["pass", "period", "train rows", "test rows"]
            + [f"AUC {task}" for task in tasks] + [f"GAUC {task}" for task in tasks])
  lines = [_row(header), _row(["---"] * len(header))]
  for summary in summaries:
    metrics = summary["test_metrics"]
    lines.append(_row(
        [summary["name"], f"{summary['start']} .. {summary['end']}",
         str(summary["train_rows"]), str(summary["test_rows"])]
        + [_number(metrics.get(f"auc/{task}")) for task in tasks]
        + [_number(metrics.get(f"gauc/{task}")) for task in tasks]))

  header = ["pass"] + [f"{name} rows: kept +new -evicted" for name in priors] + [
      f"{name} OOV test" for name in priors]
  lines += ["", _row(header), _row(["---"] * len(header))]
  for summary in summaries:
    cells = [summary["name"]]
    for name in priors:
      table = summary["tables"][name]
      if "admitted" in table:
        cells.append(f"{table['table_size']}: {table['carried']} kept "
                     f"+{table['admitted']} -{table['evicted']}")
      else:
        # A hashed or bucketized feature has a fixed table.
        cells.append(str(table["table_size"]))
    for name in priors:
      cells.append(_percent(summary["tables"][name].get("oov_share_test")))
    lines.append(_row(cells))
  return "\n".join(lines) + "\n"


def _row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def _number(value: Optional[float]) -> str:
  return "-" if value is None else f"{value:.4f}"


def _percent(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.1f}%"
