"""Requests for the exported PEPNet on TF Serving: REST JSON, gRPC and tf.Example.

A request carries rows of raw feature values, one dict per row, keyed by the names
of the config's input features (every feature except the labels):

    rows = [{"user_id": 196, "item_id": 242, "director": "m.0bwh6", ...}]
    body = rest_request(config, rows)              # POST /v1/models/pepnet:predict
    request = predict_request(config, rows)        # PredictionService.Predict
    body = rest_example_request(config, rows)      # serving_tf_example, base64

Every builder checks the rows against the config first. It raises ValueError naming
the feature for an unknown name, a missing feature or a value of the wrong type.
int64 features take Python or numpy integers, float32 features take finite numbers,
and string features take `str` (encoded as UTF-8) or `bytes`. Domain values and ids
are not checked here: the server maps unknown ids to OOV rows and rejects an unknown
domain value, unless the config names a fallback domain.
"""

import base64
import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
from google.protobuf import text_format
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib

SERVING_DEFAULT = "serving_default"
SERVING_TF_EXAMPLE = "serving_tf_example"
# Input name of the serving_tf_example signature.
EXAMPLES_INPUT = "examples"
DEFAULT_MODEL_NAME = "pepnet"
# Formats of `format_split_request`.
REQUEST_FORMATS = ("rest", "rest_columnar", "tf_example", "grpc")
SPLITS = ("train", "valid", "test")

TF_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
_NUMPY_DTYPES = {"int64": np.int64, "float32": np.float32, "string": object}
_INT64_MIN, _INT64_MAX = -2**63, 2**63 - 1
# Rows per batch when a split is read to pick out rows.
_READ_BATCH_SIZE = 1024

Row = Mapping[str, Any]
Columns = Dict[str, np.ndarray]


# Validation.


def rows_to_columns(config: features_lib.FeatureConfig, rows: Sequence[Row]) -> Columns:
  """Check `rows` against the config and stack them into one array per input feature.

  Returns:
    A dict from input feature name, in config order, to a `(num_rows,)` array:
    int64, float32, or object holding `bytes` for string features.

  Raises:
    ValueError: `rows` is empty or not a list of dicts, or a row has an unknown
      feature, lacks a feature, or has a value of the wrong type. The message names
      the row index and the feature.
  """
  if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
    raise ValueError(
        "`rows` must be a list of dicts, one dict of feature values per row. "
        f"Received: {type(rows).__name__}")
  if not rows:
    raise ValueError("`rows` is empty: a request needs at least one row.")
  specs = config.input_features
  names = {spec.name for spec in specs}
  labels = set(config.task_names)
  values = {spec.name: [] for spec in specs}
  for index, row in enumerate(rows):
    if not isinstance(row, Mapping):
      raise ValueError(f"Row {index} must be a dict of feature values. "
                       f"Received: {type(row).__name__}")
    for name in row:
      if name in labels:
        raise ValueError(
            f"Row {index} has feature {name!r}, which is a label of the feature config, "
            "not a model input. Remove it from the request.")
      if name not in names:
        raise ValueError(
            f"Row {index} has unknown feature {name!r}. Model inputs: {sorted(names)}")
    for spec in specs:
      if spec.name not in row:
        raise ValueError(f"Row {index} lacks feature {spec.name!r} ({spec.dtype}). "
                         "Every input feature is required.")
      values[spec.name].append(_checked_value(spec, row[spec.name], index))
  return {spec.name: np.array(values[spec.name], dtype=_NUMPY_DTYPES[spec.dtype])
          for spec in specs}


def columns_to_rows(config: features_lib.FeatureConfig,
                    columns: Mapping[str, Any]) -> List[Dict[str, Any]]:
  """Split one array per input feature into row dicts of Python values.

  String values become `str` where they are valid UTF-8 and stay `bytes` otherwise.
  The rows are checked as in `rows_to_columns`.

  Raises:
    ValueError: a column is unknown or missing, the columns differ in length, or
      a value has the wrong type.
  """
  if not isinstance(columns, Mapping):
    raise ValueError("`columns` must be a dict from feature name to an array of values. "
                     f"Received: {type(columns).__name__}")
  names = [spec.name for spec in config.input_features]
  unknown = sorted(set(columns) - set(names))
  if unknown:
    raise ValueError(f"Unknown feature(s) {unknown}. Model inputs: {sorted(names)}")
  missing = [name for name in names if name not in columns]
  if missing:
    raise ValueError(f"Missing feature(s) {missing}. Every input feature is required.")
  lists = {}
  for name in names:
    values = columns[name]
    if isinstance(values, tf.Tensor):
      values = values.numpy()
    if isinstance(values, np.ndarray):
      if values.ndim != 1:
        raise ValueError(f"Feature {name!r} must be a 1-D array of values, one per row. "
                         f"Received shape: {values.shape}")
      values = values.tolist()
    elif not isinstance(values, (list, tuple)):
      raise ValueError(f"Feature {name!r} must be an array or list of values, one per "
                       f"row. Received: {type(values).__name__}")
    lists[name] = list(values)
  lengths = {name: len(values) for name, values in lists.items()}
  if len(set(lengths.values())) > 1:
    raise ValueError(f"The columns differ in length: {lengths}")
  num_rows = lengths[names[0]]
  rows = [{name: _python_value(lists[name][index]) for name in names}
          for index in range(num_rows)]
  rows_to_columns(config, rows)
  return rows


def _checked_value(spec: features_lib.FeatureSpec, value: Any, index: int) -> Any:
  """Return `value` as int, float or bytes for `spec`, or raise ValueError."""
  where = f"Row {index}, feature {spec.name!r} ({spec.dtype})"
  if spec.dtype == "string":
    if isinstance(value, (str, np.str_)):
      return str(value).encode("utf-8")
    if isinstance(value, (bytes, np.bytes_)):
      return bytes(value)
    raise ValueError(f"{where} must be a str or bytes. Received {type(value).__name__}: "
                     f"{value!r}")
  if isinstance(value, (bool, np.bool_)):
    raise ValueError(f"{where} must be a number, not a bool. Received: {value!r}")
  if spec.dtype == "int64":
    if not isinstance(value, (int, np.integer)):
      raise ValueError(f"{where} must be an integer. Received {type(value).__name__}: "
                       f"{value!r}")
    if not _INT64_MIN <= int(value) <= _INT64_MAX:
      raise ValueError(f"{where} is outside the int64 range. Received: {value!r}")
    return int(value)
  if not isinstance(value, (int, float, np.integer, np.floating)):
    raise ValueError(f"{where} must be a number. Received {type(value).__name__}: "
                     f"{value!r}")
  if not math.isfinite(float(value)):
    raise ValueError(f"{where} must be finite. Received: {value!r}")
  return float(value)


def _python_value(value: Any) -> Any:
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return value
  return value


# REST.


def rest_request(config: features_lib.FeatureConfig, rows: Sequence[Row], *,
                 columnar: bool = False) -> Dict[str, Any]:
  """Build the JSON body of a REST predict request to `serving_default`.

  Row format (`columnar=False`):
  `{"signature_name": "serving_default", "instances": [{feature: value, ...}, ...]}`,
  to which TF Serving responds with `{"predictions": [{task: probability, ...}, ...]}`.
  Columnar format:
  `{"signature_name": "serving_default", "inputs": {feature: [value, ...], ...}}`,
  to which it responds with `{"outputs": {task: [probability, ...], ...}}`.

  int64 values become JSON integers, float32 values the shortest decimal that reads
  back as the same float32, and strings JSON strings, or `{"b64": ...}` where they
  are not valid UTF-8.
  """
  columns = rows_to_columns(config, rows)
  json_columns = {name: [_json_value(value) for value in values.tolist()]
                  for name, values in columns.items()}
  return _rest_body(SERVING_DEFAULT, json_columns, columnar)


def rest_example_request(config: features_lib.FeatureConfig, rows: Sequence[Row], *,
                         columnar: bool = False) -> Dict[str, Any]:
  """Build the JSON body of a REST predict request to `serving_tf_example`.

  Every row becomes a serialized `tf.train.Example`, sent base64-encoded as
  `{"examples": {"b64": ...}}` per instance, or under `"inputs"` with `columnar=True`.
  """
  examples = [{"b64": base64.b64encode(example).decode("ascii")}
              for example in serialize_examples(config, rows)]
  return _rest_body(SERVING_TF_EXAMPLE, {EXAMPLES_INPUT: examples}, columnar)


def _rest_body(signature_name: str, json_columns: Dict[str, List[Any]],
               columnar: bool) -> Dict[str, Any]:
  if columnar:
    return {"signature_name": signature_name, "inputs": json_columns}
  num_rows = len(next(iter(json_columns.values())))
  instances = [{name: values[index] for name, values in json_columns.items()}
               for index in range(num_rows)]
  return {"signature_name": signature_name, "instances": instances}


def _json_value(value: Any) -> Any:
  if isinstance(value, bytes):
    try:
      return value.decode("utf-8")
    except UnicodeDecodeError:
      return {"b64": base64.b64encode(value).decode("ascii")}
  if isinstance(value, float):
    # The shortest decimal of the float32, e.g. 0.1 rather than 0.10000000149011612.
    return float(str(np.float32(value)))
  return value


# gRPC.


def predict_request(config: features_lib.FeatureConfig, rows: Sequence[Row], *,
                    model_name: str = DEFAULT_MODEL_NAME,
                    model_version: Optional[int] = None) -> predict_pb2.PredictRequest:
  """Build a gRPC `PredictRequest` to `serving_default`.

  Every input feature becomes a `(num_rows,)` TensorProto of the config's dtype;
  strings are sent as UTF-8 bytes. `model_version` None lets the server pick its
  newest loaded version.
  """
  columns = rows_to_columns(config, rows)
  request = _new_request(SERVING_DEFAULT, model_name, model_version)
  for spec in config.input_features:
    values = columns[spec.name]
    request.inputs[spec.name].CopyFrom(
        tf.make_tensor_proto(values, dtype=TF_DTYPES[spec.dtype], shape=[len(values)]))
  return request


def example_predict_request(config: features_lib.FeatureConfig, rows: Sequence[Row], *,
                            model_name: str = DEFAULT_MODEL_NAME,
                            model_version: Optional[int] = None
                            ) -> predict_pb2.PredictRequest:
  """Build a gRPC `PredictRequest` to `serving_tf_example` from rows.

  The input `examples` is a `(num_rows,)` string TensorProto of serialized
  `tf.train.Example`.
  """
  examples = np.array(serialize_examples(config, rows), dtype=object)
  request = _new_request(SERVING_TF_EXAMPLE, model_name, model_version)
  request.inputs[EXAMPLES_INPUT].CopyFrom(
      tf.make_tensor_proto(examples, dtype=tf.string, shape=[len(examples)]))
  return request


def _new_request(signature_name: str, model_name: str,
                 model_version: Optional[int]) -> predict_pb2.PredictRequest:
  if not isinstance(model_name, str) or not model_name:
    raise ValueError(f"`model_name` must be a non-empty string. Received: {model_name!r}")
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if model_version is not None:
    if not isinstance(model_version, int) or isinstance(model_version, bool) or model_version < 0:
      raise ValueError(
          f"`model_version` must be a non-negative integer. Received: {model_version!r}")
    request.model_spec.version.value = model_version
  return request


def request_inputs(request: predict_pb2.PredictRequest) -> Dict[str, np.ndarray]:
  """Decode the inputs of a `PredictRequest` into numpy arrays, keyed by input name."""
  return {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}


# tf.train.Example.


def make_example(config: features_lib.FeatureConfig, row: Row) -> tf.train.Example:
  """Build the `tf.train.Example` of one row: one single-value feature per input."""
  columns = rows_to_columns(config, [row])
  feature = {}
  for spec in config.input_features:
    value = columns[spec.name][0]
    if spec.dtype == "int64":
      feature[spec.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    elif spec.dtype == "float32":
      feature[spec.name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
    else:
      feature[spec.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


def serialize_examples(config: features_lib.FeatureConfig, rows: Sequence[Row]) -> List[bytes]:
  """Serialize every row as a `tf.train.Example`."""
  rows_to_columns(config, rows)
  # deterministic=True sorts the feature map, so equal rows give equal bytes.
  return [make_example(config, row).SerializeToString(deterministic=True) for row in rows]


# Rows of a data split.


def read_rows(config: features_lib.FeatureConfig, files: Sequence[str], *,
              start: int = 0, count: int = 1,
              allow_fewer: bool = False) -> List[Dict[str, Any]]:
  """Read rows `start .. start + count - 1` of `files` as request rows.

  The files are read with `pepnet_tf.input.make_dataset` in its fixed evaluation
  order, and labels are left out. With `domain.on_unknown == "drop"` the row numbers
  count the rows that remain after dropping.

  Args:
    config: the feature config of the files.
    files: data files or glob patterns.
    start: index of the first row, from 0.
    count: number of rows.
    allow_fewer: return the rows that exist, possibly none, when the files end
      before row `start + count - 1`, instead of raising.

  Raises:
    ValueError: `start` or `count` is invalid, or the files have too few rows and
      `allow_fewer` is false.
  """
  for name, value, minimum in (("start", start, 0), ("count", count, 1)):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
      raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {value!r}")
  dataset = input_lib.make_dataset(config, files, _READ_BATCH_SIZE, training=False)
  features = dataset.map(lambda features, labels: features).unbatch()
  batch = next(iter(features.skip(start).take(count).batch(count)), None)
  rows = []
  if batch is not None:
    rows = columns_to_rows(config, {name: values.numpy() for name, values in batch.items()})
  if len(rows) < count and not allow_fewer:
    available = input_lib.count_records(config, files)
    raise ValueError(
        f"Rows {start} to {start + count - 1} were requested, but {list(files)} has "
        f"{available} rows, numbered from 0.")
  return rows


def split_files(model_dir: str, split: str) -> List[str]:
  """Return the data files of `split` that the training run in `model_dir` used.

  Raises:
    ValueError: `split` is unknown, `model_dir` has no `config.json`, or the run
      has no files for `split`.
  """
  if split not in SPLITS:
    raise ValueError(f"`split` must be one of {SPLITS}. Received: {split!r}")
  config_path = os.path.join(model_dir, "config.json")
  if not tf.io.gfile.exists(config_path):
    raise ValueError(
        f"{config_path} not found: {model_dir!r} is not the model_dir of a training run.")
  with tf.io.gfile.GFile(config_path) as handle:
    files = json.load(handle)["data"].get(split) or []
  if not files:
    raise ValueError(f"The training run in {model_dir} has no {split} files.")
  return list(files)


def format_split_request(model_dir: str, split: str = "valid", row: int = 0,
                         num_rows: int = 1, request_format: str = "rest",
                         model_name: str = DEFAULT_MODEL_NAME) -> str:
  """Return the request for rows `row .. row + num_rows - 1` of a run's split as text.

  Args:
    model_dir: the model_dir of a training run, with `config.json` and
      `feature_config.json`.
    split: "train", "valid" or "test".
    row: index of the first row, from 0.
    num_rows: number of consecutive rows.
    request_format: "rest" (JSON, "instances"), "rest_columnar" (JSON, "inputs"),
      "tf_example" (JSON for `serving_tf_example`) or "grpc" (a `PredictRequest` in
      protobuf text format).
    model_name: the model name of a "grpc" request.

  Raises:
    ValueError: for an invalid argument, a run without such a split, or a row out
      of range.
  """
  if request_format not in REQUEST_FORMATS:
    raise ValueError(f"`request_format` must be one of {REQUEST_FORMATS}. "
                     f"Received: {request_format!r}")
  files = split_files(model_dir, split)
  config = features_lib.load(os.path.join(model_dir, "feature_config.json"))
  rows = read_rows(config, files, start=row, count=num_rows)
  if request_format == "grpc":
    return text_format.MessageToString(predict_request(config, rows, model_name=model_name))
  if request_format == "tf_example":
    body = rest_example_request(config, rows)
  else:
    body = rest_request(config, rows, columnar=request_format == "rest_columnar")
  return json.dumps(body, indent=2)
