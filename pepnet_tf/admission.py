"""Id admission and eviction: vocabularies admitted from counts over recent passes.

Production ranking models train in passes, one a day or a week, each warm-started
from the previous one. Ids keep arriving and most are rare, so a table cannot give
every id a row. A feature whose config sets `min_frequency` or
`max_vocabulary_size` gets its vocabulary from counts:

- every training run counts the feature's values in its training files (one pass);
- the counts of the last `window` passes, this one included, are summed;
- values seen at least `min_frequency` times in that window are admitted, the most
  frequent first (ties by value), at most `max_vocabulary_size` of them;
- every other value shares the feature's `num_oov_buckets` rows, chosen by hashing;
- a value of the previous pass's vocabulary that is no longer admitted, because it
  was not seen often enough within the window, is evicted: its row is dropped.

A run writes under `model_dir/admission/`:

    counts/pass_<n>.json    the counts of every pass in the window, copied forward
                            from the previous run so that a run directory is whole
    state.json              this run's pass number and the passes of its window
    report.json             table sizes, admitted, carried and evicted ids, and
                            the share of training and test rows that hit OOV

and the resolved feature config, with the admitted vocabularies, goes to
`model_dir/feature_config.json`.
`pepnet_tf.warm_start` then carries the rows (and optimizer state) of the ids that
stay over.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib

ADMISSION_DIR = "admission"
STATE_FILE = "state.json"
REPORT_FILE = "report.json"
DEFAULT_WINDOW = 7
_COUNT_BATCH_SIZE = 8192

Counts = Dict[Any, int]


def count_values(config: features_lib.FeatureConfig, files: Sequence[str],
                 names: Sequence[str]) -> Dict[str, Counts]:
  """Count the raw values of features `names` over one pass of `files`.

  Returns:
    feature name -> {value: number of rows}, values as Python ints or strs.
  """
  if not names:
    return {}
  dtypes = {name: config.feature(name).dtype for name in names}
  parts = {name: ([], []) for name in names}
  dataset = input_lib.make_dataset(config, files, _COUNT_BATCH_SIZE, training=False)
  for features, _ in dataset:
    for name in names:
      values, counts = np.unique(features[name].numpy().reshape(-1), return_counts=True)
      parts[name][0].append(values)
      parts[name][1].append(counts)
  result = {}
  for name in names:
    values_list, counts_list = parts[name]
    if not values_list:
      result[name] = {}
      continue
    values, inverse = np.unique(np.concatenate(values_list), return_inverse=True)
    totals = np.bincount(inverse.reshape(-1), weights=np.concatenate(counts_list))
    result[name] = {_python_value(value, dtypes[name]): int(total)
                    for value, total in zip(values, totals)}
  return result


def _python_value(value: Any, dtype: str) -> Any:
  if dtype == "string":
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
  return int(value)


def admit(counts: Mapping[Any, int], min_frequency: Optional[int] = None,
          max_size: Optional[int] = None, unknown_values: Sequence[Any] = ()) -> List[Any]:
  """Admit the values seen at least `min_frequency` times, the most frequent first.

  Ties are broken by the value, so the vocabulary does not depend on count order.
  At most `max_size` values are kept when it is set, and `unknown_values` never.
  """
  threshold = 1 if min_frequency is None else min_frequency
  excluded = set(unknown_values)
  admitted = [(count, value) for value, count in counts.items()
              if count >= threshold and value not in excluded]
  admitted.sort(key=lambda item: (-item[0], item[1]))
  if max_size is not None:
    admitted = admitted[:max_size]
  return [value for _, value in admitted]


def oov_share(counts: Mapping[Any, int], vocabulary: Sequence[Any]) -> Optional[float]:
  """Return the share of counted rows whose value is outside `vocabulary`, or None."""
  total = sum(counts.values())
  if total == 0:
    return None
  known = set(vocabulary)
  return sum(count for value, count in counts.items() if value not in known) / total


def sum_counts(passes: Sequence[Mapping[Any, int]]) -> Counts:
  total: Counts = {}
  for counts in passes:
    for value, count in counts.items():
      total[value] = total.get(value, 0) + count
  return total


def read_json(path: str) -> Any:
  """Return the JSON content of `path`, or None if the file does not exist."""
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as handle:
    return json.load(handle)


def write_json(path: str, payload: Any, indent: Optional[int] = None) -> None:
  """Write `payload` under a temporary name and rename it, so no half file remains."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  temporary = path + ".tmp"
  with tf.io.gfile.GFile(temporary, "w") as handle:
    json.dump(payload, handle, indent=indent)
    handle.write("\n")
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read_state(model_dir: str) -> Optional[Dict[str, Any]]:
  """Return the admission state of a run directory, or None if it has none."""
  return read_json(os.path.join(model_dir, ADMISSION_DIR, STATE_FILE))


def read_report(model_dir: str) -> Optional[Dict[str, Any]]:
  """Return the admission report of a run directory, or None if it has none."""
  return read_json(os.path.join(model_dir, ADMISSION_DIR, REPORT_FILE))


def _read_pass_counts(path: str) -> Dict[str, Counts]:
  raw = read_json(path)
  return {name: dict(zip(entry["values"], entry["counts"])) for name, entry in raw.items()}


def _pass_file(number: int) -> str:
  return f"pass_{number:04d}.json"


def _previous_window(previous_dir: Optional[str], window: int
                     ) -> Tuple[int, List[Tuple[int, Dict[str, Counts]]]]:
  """Return the previous run's pass number and the counts of its passes in the window."""
  if previous_dir is None:
    return 0, []
  state = read_state(previous_dir)
  if state is None:
    # A run without admission state counts as one pass whose counts are unknown.
    return 1, []
  in_window = [number for number in state["window_passes"]
          if number > state["pass"] + 1 - window]
  counts_dir = os.path.join(previous_dir, ADMISSION_DIR, "counts")
  return state["pass"], [(number, _read_pass_counts(os.path.join(counts_dir, _pass_file(number))))
                         for number in in_window]


def previous_vocabularies(previous_dir: Optional[str]) -> Dict[str, Tuple[List[Any], int]]:
  """Return the vocabulary and OOV bucket count of every vocabulary feature of a run."""
  if previous_dir is None:
    return {}
  previous = features_lib.load(os.path.join(previous_dir, "feature_config.json"))
  return {spec.name: (previous.vocabulary_of(spec), spec.num_oov_buckets)
          for spec in previous.features
          if spec.is_embedded and spec.encoding == "vocabulary" and not spec.needs_admission}


@dataclasses.dataclass
class AdmissionResult:
  """The resolved feature config of a run and what admission did.

  Attributes:
    config: the feature config with every admitted vocabulary filled in.
    report: JSON-ready report, see `admit_vocabularies`.
  """

  config: features_lib.FeatureConfig
  report: Dict[str, Any]


def admit_vocabularies(config: features_lib.FeatureConfig,
                       train_files: Sequence[str],
                       model_dir: Optional[str],
                       window: int = DEFAULT_WINDOW,
                       previous_dir: Optional[str] = None,
                       test_files: Sequence[str] = ()) -> AdmissionResult:
  """Count the training data, admit vocabularies and report table sizes and OOV traffic.

  Args:
    config: the dataset's feature config; features with `min_frequency` or
      `max_vocabulary_size` get their vocabulary from counts.
    train_files: this pass's training files.
    model_dir: the run directory that receives the counts, state and report; None
      writes nothing.
    window: number of most recent passes, this one included, whose counts decide
      admission; at least 1.
    previous_dir: the run directory of the previous pass, or None for a first pass.
    test_files: files whose OOV share is reported as well; may be empty.

  Returns:
    An `AdmissionResult`. Its report contains the pass number, the window's passes
    and the size of every table. For every vocabulary feature it also contains:
    - `vocabulary_size` and `num_oov_buckets`;
    - `seen`, the distinct values in this pass, and `seen_in_window`;
    - `admitted` (ids new to the vocabulary), `carried` (ids kept from the previous
      pass) and `evicted` (ids of the previous vocabulary dropped now);
    - `evicted_unseen`, the evicted ids not seen at all within the window;
    - `oov_share_train` and `oov_share_test`, the share of rows whose value hits an
      OOV bucket.
  """
  if not isinstance(window, int) or isinstance(window, bool) or window < 1:
    raise ValueError(f"The admission window must be an integer >= 1. Received: {window!r}")
  vocabulary_specs = [spec for spec in config.features
                      if spec.is_embedded and spec.encoding == "vocabulary"]
  admitted_names = [spec.name for spec in vocabulary_specs if spec.admits_from_counts]
  names = [spec.name for spec in vocabulary_specs]

  previous_pass, window_passes = _previous_window(previous_dir, window)
  number = previous_pass + 1
  current = count_values(config, train_files, names)
  test_counts = count_values(config, test_files, names) if test_files else {}
  window_passes = window_passes + [(number, {name: current[name] for name in admitted_names})]
  in_window = {name: sum_counts([counts.get(name, {}) for _, counts in window_passes])
               for name in admitted_names}
  previous = previous_vocabularies(previous_dir)

  resolved_specs = []
  features_report = {}
  for spec in config.features:
    if spec.name not in names:
      resolved_specs.append(spec)
      continue
    if spec.admits_from_counts:
      vocabulary = admit(in_window[spec.name], spec.min_frequency, spec.max_vocabulary_size,
                         spec.unknown_values or ())
      if not vocabulary:
        logging.warning(
            "No value of feature %r is seen %s times within the last %d passes; every "
            "value maps to its %d OOV buckets.", spec.name, spec.min_frequency or 1,
            len(window_passes), spec.num_oov_buckets)
    else:
      vocabulary = config.vocabulary_of(spec)
    # Every vocabulary goes inline into the run's config, so that the run stays whole
    # when the data directory changes or goes.
    spec = _with_vocabulary(spec, vocabulary)
    resolved_specs.append(spec)
    entry = {
        "vocabulary_size": len(vocabulary),
        "num_oov_buckets": spec.num_oov_buckets,
        "admission": ({"min_frequency": spec.min_frequency,
                       "max_vocabulary_size": spec.max_vocabulary_size}
                      if spec.admits_from_counts else None),
        "seen": len(current[spec.name]),
        "oov_share_train": oov_share(current[spec.name], vocabulary),
        "oov_share_test": (oov_share(test_counts[spec.name], vocabulary)
                           if spec.name in test_counts else None),
    }
    if spec.admits_from_counts:
      entry["seen_in_window"] = len(in_window[spec.name])
    new_set = set(vocabulary)
    if spec.name in previous:
      old_set = set(previous[spec.name][0])
      evicted = old_set - new_set
      seen = in_window.get(spec.name, current[spec.name])
      entry.update(admitted=len(new_set - old_set), carried=len(new_set & old_set),
                   evicted=len(evicted),
                   evicted_unseen=sum(1 for value in evicted if value not in seen))
    else:
      entry.update(admitted=len(new_set), carried=0, evicted=0, evicted_unseen=0)
    features_report[spec.name] = entry

  resolved = dataclasses.replace(config, features=resolved_specs)
  if model_dir is not None:
    resolved = dataclasses.replace(resolved, base_dir=os.path.abspath(model_dir))
  resolved.validate()
  from pepnet_tf import embedding  # pylint: disable=g-import-not-at-top
  report = {
      "pass": number,
      "window": window,
      "window_passes": [passed for passed, _ in window_passes],
      "previous_dir": previous_dir,
      "table_sizes": embedding.table_sizes(resolved),
      "features": features_report,
  }
  if model_dir is not None:
    admission_dir = os.path.join(model_dir, ADMISSION_DIR)
    for passed, counts in window_passes:
      write_json(os.path.join(admission_dir, "counts", _pass_file(passed)),
                  {name: {"values": list(values), "counts": list(values.values())}
                   for name, values in counts.items()})
    write_json(os.path.join(admission_dir, STATE_FILE),
                {"pass": number, "window": window,
                 "window_passes": report["window_passes"]})
    # Written last: its presence marks the admission of this run as complete.
    write_json(os.path.join(admission_dir, REPORT_FILE), report)
  return AdmissionResult(resolved, report)


def _with_vocabulary(spec: features_lib.FeatureSpec,
                     vocabulary: List[Any]) -> features_lib.FeatureSpec:
  """Return `spec` with `vocabulary` written into the config itself.

  An inline vocabulary keeps the config whole wherever it is read: a copy of the run
  directory, `FeatureConfig.to_dict`, or a Keras layer config.
  """
  return dataclasses.replace(spec, vocabulary=list(vocabulary), vocabulary_file=None)


def format_report(report: Mapping[str, Any]) -> str:
  """Format the report as a text table with one row per vocabulary feature."""
  header = ["feature", "table", "vocab", "oov", "admitted", "carried", "evicted",
            "oov train", "oov test"]
  rows = []
  for name, entry in report["features"].items():
    rows.append([name, str(report["table_sizes"][name]), str(entry["vocabulary_size"]),
                 str(entry["num_oov_buckets"]), str(entry["admitted"]),
                 str(entry["carried"]), str(entry["evicted"]),
                 _percent(entry["oov_share_train"]), _percent(entry["oov_share_test"])])
  widths = [max(len(row[column]) for row in [header] + rows) for column in range(len(header))]
  lines = [f"Pass {report['pass']}, admission window {report['window_passes']}:"]
  lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths))
            for row in [header] + rows]
  return "\n".join(lines)


def _percent(value: Optional[float]) -> str:
  return "-" if value is None else f"{100 * value:.2f}%"
