"""SavedModel export with serving signatures and warmup requests for TF Serving.

Two signatures, both with method `tensorflow/serving/predict`:

- `serving_default`: one `(batch_size,)` input per input feature of the config (every
  feature except the labels), named like the feature, of its dtype: int64, float32 or
  string. Every input is required.
- `serving_tf_example`: input `examples`, a `(batch_size,)` string tensor of
  serialized `tf.train.Example`. Every input feature is parsed as a `FixedLenFeature`
  of shape `[]`. A feature missing from an example takes the config's `default`, and
  without a default the request fails with InvalidArgumentError naming the feature.
  Features that the config does not list are ignored.

Both return one `(batch_size,)` float32 probability per task, keyed by task name. Ids
outside a vocabulary use the feature's OOV rows. A domain value outside
`domain.values` fails the request with InvalidArgumentError naming the value, unless
the config names `domain.fallback`, whose head then scores the row.

The SavedModel contains the model's layers only: embedding tables, lookup tables
and dense weights, without optimizer slots or metric variables. Its graph uses core
TensorFlow ops only, so plain `tf.saved_model.load` and TF Serving load it without
pepnet_tf.

`export_versioned` writes `export_base/<version>/` for TF Serving, whose file system
source loads the children of the base path whose names parse as integers and skips
all others. The export is written to a hidden sibling `.tmp-<version>-<pid>-<random>`
and renamed, so a server polling `export_base` never loads a half-written version
or a temporary directory that a crashed export left behind.
"""

import os
import time
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pepnet_tf import features as features_lib
from pepnet_tf import serving

SIGNATURE_NAMES = (serving.SERVING_DEFAULT, serving.SERVING_TF_EXAMPLE)
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# Validation rows that training and trainers.export put into the warmup requests.
DEFAULT_WARMUP_ROWS = 8
TEMP_PREFIX = ".tmp-"
# Largest difference allowed between the exported and the in-memory probabilities.
VERIFY_TOLERANCE = 1e-5
# Versions tried after the chosen one when another export takes it first.
_MAX_VERSION_RETRIES = 100


class ExportVerificationError(RuntimeError):
  """Raised when a freshly written SavedModel does not reproduce the in-memory model."""


def input_signature(config: features_lib.FeatureConfig) -> Dict[str, tf.TensorSpec]:
  """TensorSpecs of the raw inputs of `serving_default`, keyed by feature name."""
  return {spec.name: tf.TensorSpec([None], serving.TF_DTYPES[spec.dtype], name=spec.name)
          for spec in config.input_features}


def example_parse_spec(config: features_lib.FeatureConfig) -> Dict[str, tf.io.FixedLenFeature]:
  """`tf.io.parse_example` spec of the input features; `default` fills a missing one."""
  spec = {}
  for feature in config.input_features:
    spec[feature.name] = tf.io.FixedLenFeature(
        [], serving.TF_DTYPES[feature.dtype], default_value=_default_value(feature))
  return spec


def _default_value(feature: features_lib.FeatureSpec) -> Any:
  """Return the feature's `default` in its dtype, or None if it has none."""
  default = feature.default
  if default is None:
    return None
  if not isinstance(default, bool):
    if feature.dtype == "string" and isinstance(default, str):
      return default
    if feature.dtype == "int64" and isinstance(default, int):
      return default
    if feature.dtype == "float32" and isinstance(default, (int, float)):
      return float(default)
  raise features_lib.FeatureConfigError(
      f"The default of feature {feature.name!r} must be a {feature.dtype} value like the "
      f"feature. Received: default={default!r}")


class ServingModule(tf.Module):
  """The serving functions of a trained PEPNet, ready for `tf.saved_model.save`.

  Only `model.layers` are tracked, not the model, because the model also references
  its optimizers and metrics, whose variables do not belong in a serving export. The functions call
  the model, so every variable they read belongs to one of the tracked layers.

  Args:
    model: a PEPNet that has been called on a batch, so that its weights exist.
    config: the feature config the model was built with.
  """

  def __init__(self, model: tf.keras.Model, config: features_lib.FeatureConfig):
    super().__init__(name="pepnet_serving")
    if not model.built:
      raise ValueError("The model has no weights yet. Call it once on a batch of features "
                       "(or restore a checkpoint into a called model) before export.")
    self.layers = list(model.layers)
    parse_spec = example_parse_spec(config)

    def serve(features):
      outputs = model(features, training=False)
      return {name: tf.identity(value, name=name) for name, value in outputs.items()}

    def serve_examples(examples):
      # (batch_size,) serialized tf.Example -> feature name -> (batch_size,)
      return serve(tf.io.parse_example(examples, parse_spec))

    self.serve = tf.function(serve, input_signature=[input_signature(config)])
    self.serve_examples = tf.function(
        serve_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name=serving.EXAMPLES_INPUT)])

  def signatures(self) -> Dict[str, Any]:
    return {
        serving.SERVING_DEFAULT: self.serve.get_concrete_function(),
        serving.SERVING_TF_EXAMPLE: self.serve_examples.get_concrete_function(),
    }


def save(model: tf.keras.Model,
         config: features_lib.FeatureConfig,
         path: str,
         warmup_rows: Optional[Mapping[str, Any]] = None,
         model_name: str = serving.DEFAULT_MODEL_NAME) -> str:
  """Write the SavedModel of `model` with both signatures to `path`.

  Args:
    model: a called PEPNet.
    config: its feature config.
    path: the SavedModel directory.
    warmup_rows: None, or a dict from every input feature name to an array of raw
      values, one per row. `path/assets.extra/tf_serving_warmup_requests` then
      contains the requests of `warmup_requests`.
    model_name: the model name in the warmup requests.

  Returns:
    `path`.
  """
  requests = None
  if warmup_rows is not None:
    requests = warmup_requests(config, warmup_rows, model_name)
  module = ServingModule(model, config)
  tf.saved_model.save(module, path, signatures=module.signatures())
  if requests is not None:
    write_warmup_file(os.path.join(path, WARMUP_FILE), requests)
  return path


# Warmup requests.


def warmup_requests(config: features_lib.FeatureConfig,
                    warmup_rows: Mapping[str, Any],
                    model_name: str = serving.DEFAULT_MODEL_NAME
                    ) -> List[prediction_log_pb2.PredictionLog]:
  """Build TF Serving warmup records from rows of real data.

  For each signature, one request with the first row and one with all rows, so that
  loading a version runs both signatures at two batch sizes before it takes traffic.
  TF Serving runs the records of `assets.extra/tf_serving_warmup_requests` when it
  loads a version, and a failing record fails the load.

  Raises:
    ValueError: `warmup_rows` is empty, lacks an input feature, has an unknown one,
      or contains a value of the wrong type.
  """
  rows = serving.columns_to_rows(config, warmup_rows)
  batch_sizes = sorted({1, len(rows)})
  records = []
  for batch_size in batch_sizes:
    batch = rows[:batch_size]
    for request in (serving.predict_request(config, batch, model_name=model_name),
                    serving.example_predict_request(config, batch, model_name=model_name)):
      records.append(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)))
  return records


def write_warmup_file(path: str, records: Sequence[prediction_log_pb2.PredictionLog]) -> None:
  """Write `records` as an uncompressed TFRecord file, the format TF Serving reads."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record.SerializeToString())


def read_warmup_file(path: str) -> List[prediction_log_pb2.PredictionLog]:
  """Parse a warmup file back into PredictionLog records."""
  records = []
  for serialized in tf.data.TFRecordDataset(path):
    record = prediction_log_pb2.PredictionLog()
    record.ParseFromString(serialized.numpy())
    records.append(record)
  return records


def read_warmup_rows(config: features_lib.FeatureConfig, files: Sequence[str],
                     count: int = DEFAULT_WARMUP_ROWS) -> Optional[Dict[str, np.ndarray]]:
  """Read up to `count` first rows of `files` as `warmup_rows` columns.

  Returns None, so that no warmup file is written, when the files have no rows.
  """
  rows = serving.read_rows(config, files, count=count, allow_fewer=True)
  if not rows:
    logging.warning("%s has no rows, so the export gets no warmup requests.", list(files))
    return None
  return serving.rows_to_columns(config, rows)


# Verification.


def verify_export(path: str, model: tf.keras.Model, config: features_lib.FeatureConfig,
                  rows: Optional[Mapping[str, Any]] = None) -> None:
  """Load the SavedModel at `path` and check it against the in-memory model.

  Both signatures must return a `(batch_size,)` float32 output per task that equals
  the model's output within `VERIFY_TOLERANCE`, on `rows` (columns of raw values) or,
  without rows, on one placeholder row. Every warmup record must run and return
  outputs of its batch size.

  Raises:
    ExportVerificationError: for a missing signature or output, a wrong shape or
      dtype, an output that differs from the model, or a failing warmup record.
  """
  row_list = ([_placeholder_row(config)] if rows is None
              else serving.columns_to_rows(config, rows))
  columns = serving.rows_to_columns(config, row_list)
  inputs = {spec.name: tf.constant(columns[spec.name], dtype=serving.TF_DTYPES[spec.dtype])
            for spec in config.input_features}
  examples = tf.constant(serving.serialize_examples(config, row_list), dtype=tf.string)
  expected = {name: value.numpy() for name, value in model(inputs, training=False).items()}

  loaded = tf.saved_model.load(path)
  missing = [name for name in SIGNATURE_NAMES if name not in loaded.signatures]
  if missing:
    raise ExportVerificationError(f"{path} lacks the signature(s) {missing}.")
  for name, arguments in ((serving.SERVING_DEFAULT, inputs),
                          (serving.SERVING_TF_EXAMPLE, {serving.EXAMPLES_INPUT: examples})):
    outputs = loaded.signatures[name](**arguments)
    _check_outputs(f"Signature {name} of {path}", outputs, len(row_list), expected)

  warmup_path = os.path.join(path, WARMUP_FILE)
  if not tf.io.gfile.exists(warmup_path):
    return
  for index, record in enumerate(read_warmup_file(warmup_path)):
    request = record.predict_log.request
    where = f"Warmup record {index} of {warmup_path}"
    request_inputs = serving.request_inputs(request)
    try:
      signature = loaded.signatures[request.model_spec.signature_name]
      outputs = signature(**{key: tf.constant(value) for key, value in request_inputs.items()})
    except (KeyError, TypeError, ValueError, tf.errors.OpError) as error:
      raise ExportVerificationError(f"{where} fails: {error}") from error
    batch_size = len(next(iter(request_inputs.values())))
    _check_outputs(where, outputs, batch_size, {task: None for task in expected})


def _check_outputs(where: str, outputs: Mapping[str, tf.Tensor], batch_size: int,
                   expected: Mapping[str, Optional[np.ndarray]]) -> None:
  """Check the outputs' names, dtypes and shapes, and values where `expected` has them."""
  if set(outputs) != set(expected):
    raise ExportVerificationError(
        f"{where} returns outputs {sorted(outputs)}, expected the tasks {sorted(expected)}.")
  for task, value in outputs.items():
    if value.dtype != tf.float32 or tuple(value.shape) != (batch_size,):
      raise ExportVerificationError(
          f"{where} returns {task!r} as {value.dtype.name} of shape {tuple(value.shape)}, "
          f"expected float32 of shape ({batch_size},).")
    if expected[task] is not None:
      difference = float(np.max(np.abs(value.numpy() - expected[task]), initial=0.0))
      if difference > VERIFY_TOLERANCE:
        raise ExportVerificationError(
            f"{where} differs from the in-memory model on task {task!r} by "
            f"{difference:.3g} (tolerance {VERIFY_TOLERANCE}).")


def _placeholder_row(config: features_lib.FeatureConfig) -> Dict[str, Any]:
  """Return one row of the first domain with zeros and empty strings, which map to OOV."""
  row = {}
  for spec in config.input_features:
    if spec.name == config.domain.feature:
      row[spec.name] = config.domain.values[0]
    else:
      row[spec.name] = {"int64": 0, "float32": 0.0, "string": ""}[spec.dtype]
  return row


# Versioned export.


def export_versioned(model: tf.keras.Model,
                     config: features_lib.FeatureConfig,
                     export_base: str,
                     keep: Optional[int] = 5,
                     version: Optional[int] = None,
                     warmup_rows: Optional[Mapping[str, Any]] = None,
                     model_name: str = serving.DEFAULT_MODEL_NAME,
                     verify: bool = True) -> str:
  """Export to `export_base/<version>/` atomically and keep the newest `keep` versions.

  Steps: write the SavedModel (and the warmup file) to a hidden temporary sibling,
  load it back and compare it with the in-memory model (`verify_export`), rename it
  to its version, then delete the versions older than the newest `keep`. A failure
  before the rename removes the temporary directory and leaves `export_base` as it
  was. Temporary directories of other exports, running or crashed, are left alone
  and logged. TF Serving skips them because their names are not integers.

  NOTE: The rename is atomic on local and other POSIX file systems. Object stores
  such as gs:// copy a directory file by file, so a server could see a partial
  version there.

  Args:
    model: a called PEPNet.
    config: its feature config.
    export_base: the directory that TF Serving's `base_path` points at.
    keep: number of newest versions to keep, at least 1, or None to keep all. The
      version just written is never deleted. Keep more versions than the server's
      `model_version_policy` serves, so that no loaded version is deleted.
    version: the version number. None uses the current Unix time in seconds, or the
      newest existing version + 1 if that is larger, and moves on to the next free
      number if another export takes the chosen one first. An explicit version
      that exists raises FileExistsError.
    warmup_rows: rows of real data for the warmup file, see `save`; None writes no
      warmup file.
    model_name: the model name in the warmup requests.
    verify: whether to check the written SavedModel before the rename. It loads a
      second copy of the model into memory.

  Returns:
    The path of the new version.

  Raises:
    ValueError: for an invalid `keep` or `version`, or invalid `warmup_rows`.
    FileExistsError: the explicit `version` exists.
    ExportVerificationError: the written SavedModel does not match the model.
  """
  if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
    raise ValueError(f"`keep` must be an integer >= 1 or None. Received: keep={keep!r}")
  if version is not None and (
      not isinstance(version, int) or isinstance(version, bool) or version < 0):
    raise ValueError(
        f"`version` must be a non-negative integer or None. Received: version={version!r}")
  tf.io.gfile.makedirs(export_base)
  explicit = version is not None
  existing = versions(export_base)
  if explicit:
    if version in existing:
      raise FileExistsError(
          f"Version {version} already exists in {export_base}. Choose another version, "
          "or pass version=None for the next free one.")
  else:
    version = max(int(time.time()), existing[-1] + 1 if existing else 0)

  temp_path = os.path.join(
      export_base, f"{TEMP_PREFIX}{version}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    save(model, config, temp_path, warmup_rows, model_name)
    if verify:
      verify_export(temp_path, model, config, warmup_rows)
    final_path = _publish(temp_path, export_base, version, explicit)
  finally:
    if tf.io.gfile.exists(temp_path):
      tf.io.gfile.rmtree(temp_path)

  final_version = int(os.path.basename(final_path))
  if keep is not None:
    for old in versions(export_base)[:-keep]:
      if old != final_version:
        tf.io.gfile.rmtree(os.path.join(export_base, str(old)))
        logging.info("Deleted export version %d of %s", old, export_base)
  leftovers = [name.rstrip("/") for name in tf.io.gfile.listdir(export_base)
               if name.startswith(TEMP_PREFIX)]
  if leftovers:
    logging.warning(
        "%s contains temporary directories of other exports: %s. TF Serving ignores "
        "them. Delete them once no export into this directory is running.",
        export_base, sorted(leftovers))
  return final_path


def _publish(temp_path: str, export_base: str, version: int, explicit: bool) -> str:
  """Rename `temp_path` to `export_base/<version>`, or the next free version."""
  for _ in range(_MAX_VERSION_RETRIES):
    final_path = os.path.join(export_base, str(version))
    try:
      tf.io.gfile.rename(temp_path, final_path, overwrite=False)
      return final_path
    except tf.errors.OpError as error:
      # A concurrent export took this version between the listing and the rename.
      if not tf.io.gfile.exists(final_path):
        raise
      if explicit:
        raise FileExistsError(
            f"Version {version} was created in {export_base} by another export during "
            "this one.") from error
      version += 1
  raise FileExistsError(
      f"Versions {version - _MAX_VERSION_RETRIES} .. {version - 1} of {export_base} were "
      "all taken by other exports during this one.")


def versions(export_base: str) -> List[int]:
  """The version numbers under `export_base`, ascending: children named by digits."""
  if not tf.io.gfile.exists(export_base):
    return []
  names = [name.rstrip("/") for name in tf.io.gfile.listdir(export_base)]
  return sorted(int(name) for name in names if name.isascii() and name.isdigit())


def latest_export(export_base: str) -> Optional[str]:
  """Path of the newest version under `export_base`, or None."""
  existing = versions(export_base)
  return os.path.join(export_base, str(existing[-1])) if existing else None
