"""Tests of the request builders, the request CLI, the docs' requests and the model config.

One small model is trained once for the module with `training.train` on 2048 real
MovieLens-100K training rows and exported at the end of training. The data is
prepared into a temporary directory with the default seed, so validation row 0 is
the row of docs/SERVING.md. Requests built by `pepnet_tf.serving` are decoded the way TF Serving
decodes them and fed to the loaded SavedModel. The gRPC test runs the docs' client
code against a stand-in PredictionService on 127.0.0.1 that runs the loaded
SavedModel. It is not TF Serving, which cannot be installed here.
"""

import base64
from concurrent import futures
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

import movielens_run
from pepnet_tf import serving
from pepnet_tf import training

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOCS = os.path.join(_REPO_ROOT, "docs", "SERVING.md")
_MODEL_CONFIG = os.path.join(_REPO_ROOT, "serving", "models.config")
_TRAIN_ROWS = 2048
_TOLERANCE = 1e-5
_TASKS = ("like", "love")
_PROTO_DTYPES = {"int64": tf.int64.as_datatype_enum, "float32": tf.float32.as_datatype_enum,
                 "string": tf.string.as_datatype_enum}


def _tensors(config, columns):
  return {spec.name: tf.constant(columns[spec.name], dtype=serving.TF_DTYPES[spec.dtype])
          for spec in config.input_features}


def _numpy(outputs):
  return {name: np.asarray(value) for name, value in outputs.items()}


def _decode_json_values(values, dtype):
  """Convert JSON values of one input to a tensor, as TF Serving's REST API does."""
  if dtype == tf.string:
    return tf.constant([base64.b64decode(value["b64"]) if isinstance(value, dict)
                        else value.encode("utf-8") for value in values], dtype=tf.string)
  return tf.constant(values, dtype=dtype)


def _rest_inputs(body, signature):
  """The input tensors of a REST predict body in row or columnar format."""
  dtypes = {name: spec.dtype for name, spec in signature.structured_input_signature[1].items()}
  if "instances" in body:
    columns = {name: [instance[name] for instance in body["instances"]] for name in dtypes}
  else:
    columns = body["inputs"]
  return {name: _decode_json_values(columns[name], dtypes[name]) for name in dtypes}


def _docs_text():
  with open(_DOCS, encoding="utf-8") as handle:
    return handle.read()


def _marked_blocks(text, marker):
  """Return (marker arguments, code) for every code block right after `<!-- marker... -->`."""
  pattern = re.compile(r"<!-- " + marker + r":?(.*?) -->\n```[a-z]*\n(.*?)```", re.DOTALL)
  return [(arguments.strip(), code) for arguments, code in pattern.findall(text)]


class _StandInPredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Runs the requested signature of a loaded SavedModel, like TF Serving's Predict."""

  def __init__(self, loaded, model_name):
    self.loaded = loaded
    self.model_name = model_name

  def Predict(self, request, context):  # pylint: disable=invalid-name
    if request.model_spec.name != self.model_name:
      context.abort(grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: {request.model_spec.name}")
    signature = self.loaded.signatures[request.model_spec.signature_name or "serving_default"]
    inputs = {name: tf.constant(tf.make_ndarray(tensor))
              for name, tensor in request.inputs.items()}
    try:
      outputs = signature(**inputs)
    except tf.errors.InvalidArgumentError as error:
      context.abort(grpc.StatusCode.INVALID_ARGUMENT, error.message)
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    for name, value in outputs.items():
      response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
    return response


class ServingTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    result = movielens_run.train_small_model("pepnet_serving_test_", _TRAIN_ROWS)
    cls.temp_dir = result["temp_dir"]
    cls.model_dir = result["model_dir"]
    cls.valid_files = result["valid_files"]
    cls.model, cls.config, _ = training.load_trained_model(cls.model_dir)
    cls.loaded = tf.saved_model.load(result["export_path"])
    cls.rows = serving.read_rows(cls.config, cls.valid_files, count=16)
    cls.columns = serving.rows_to_columns(cls.config, cls.rows)
    cls.expected = _numpy(cls.model(_tensors(cls.config, cls.columns), training=False))

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.temp_dir, ignore_errors=True)
    super().tearDownClass()

  def assertOutputsClose(self, actual, expected):
    self.assertEqual(sorted(actual), sorted(expected))
    for task in expected:
      self.assertAllClose(actual[task], expected[task], atol=_TOLERANCE, rtol=0,
                          msg=f"task {task}")

  def expected_for(self, rows):
    columns = serving.rows_to_columns(self.config, rows)
    return _numpy(self.model(_tensors(self.config, columns), training=False))

  # Row validation.

  def test_invalid_rows_raise_naming_feature(self):
    row = self.rows[0]
    cases = [
        ([dict(row, colour="red")], r"Row 0 has unknown feature 'colour'"),
        ([dict(row, like=1)], r"feature 'like', which is a label"),
        ([{k: v for k, v in row.items() if k != "genre"}], r"Row 0 lacks feature 'genre'"),
        ([row, dict(row, user_id="499")], r"Row 1, feature 'user_id' \(int64\) must be an integer"),
        ([dict(row, user_id=4.0)], r"feature 'user_id' \(int64\) must be an integer"),
        ([dict(row, user_id=2**63)], r"feature 'user_id' \(int64\) is outside the int64 range"),
        ([dict(row, domain=True)], r"feature 'domain' \(int64\) must be a number, not a bool"),
        ([dict(row, item_domain_count="73")],
         r"feature 'item_domain_count' \(float32\) must be a number"),
        ([dict(row, item_domain_count=float("nan"))],
         r"feature 'item_domain_count' \(float32\) must be finite"),
        ([dict(row, gender=1)], r"feature 'gender' \(string\) must be a str or bytes"),
        ([], r"`rows` is empty"),
        (row, r"`rows` must be a list of dicts"),
        (["user_id"], r"Row 0 must be a dict"),
    ]
    for rows, message in cases:
      for build in (serving.rest_request, serving.rest_example_request,
                    serving.predict_request, serving.example_predict_request):
        with self.assertRaisesRegex(ValueError, message, msg=build.__name__):
          build(self.config, rows)

  def test_numpy_values_are_accepted(self):
    row = dict(self.rows[0], user_id=np.int32(499), item_domain_count=np.float64(73.0),
               director=np.bytes_(b"m.03c4fph"), genre=np.str_("Comedy"))
    self.assertEqual(serving.rest_request(self.config, [row]),
                     serving.rest_request(self.config, self.rows[:1]))

  def test_columns_to_rows_round_trip(self):
    rows = serving.columns_to_rows(self.config, self.columns)
    self.assertEqual(rows, self.rows)
    with self.assertRaisesRegex(ValueError, r"differ in length"):
      serving.columns_to_rows(self.config, dict(self.columns, hour=self.columns["hour"][:3]))
    with self.assertRaisesRegex(ValueError, r"Unknown feature\(s\) \['colour'\]"):
      serving.columns_to_rows(self.config, dict(self.columns, colour=self.columns["hour"]))

  # gRPC requests.

  def test_predict_request_matches_model(self):
    request = serving.predict_request(self.config, self.rows, model_version=3)
    self.assertEqual(request.model_spec.name, "pepnet")
    self.assertEqual(request.model_spec.signature_name, "serving_default")
    self.assertEqual(request.model_spec.version.value, 3)
    for spec in self.config.input_features:
      self.assertEqual(request.inputs[spec.name].dtype, _PROTO_DTYPES[spec.dtype], msg=spec.name)
    inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
    self.assertEqual(sorted(inputs), sorted(spec.name for spec in self.config.input_features))
    outputs = self.loaded.signatures["serving_default"](
        **{name: tf.constant(value) for name, value in inputs.items()})
    self.assertOutputsClose(_numpy(outputs), self.expected)

  def test_example_predict_request_matches_model(self):
    request = serving.example_predict_request(self.config, self.rows)
    self.assertEqual(request.model_spec.signature_name, "serving_tf_example")
    self.assertEqual(list(request.inputs), ["examples"])
    examples = tf.make_ndarray(request.inputs["examples"])
    self.assertEqual(examples.shape, (len(self.rows),))
    outputs = self.loaded.signatures["serving_tf_example"](examples=tf.constant(examples))
    self.assertOutputsClose(_numpy(outputs), self.expected)

  # REST requests.

  def test_rest_bodies_round_trip_through_json(self):
    for columnar in (False, True):
      body = serving.rest_request(self.config, self.rows, columnar=columnar)
      self.assertEqual(json.loads(json.dumps(body)), body)
      self.assertEqual(body["signature_name"], "serving_default")
      signature = self.loaded.signatures["serving_default"]
      outputs = signature(**_rest_inputs(json.loads(json.dumps(body)), signature))
      self.assertOutputsClose(_numpy(outputs), self.expected)

  def test_rest_example_bodies_round_trip_through_json(self):
    for columnar in (False, True):
      body = serving.rest_example_request(self.config, self.rows, columnar=columnar)
      self.assertEqual(json.loads(json.dumps(body)), body)
      self.assertEqual(body["signature_name"], "serving_tf_example")
      signature = self.loaded.signatures["serving_tf_example"]
      outputs = signature(**_rest_inputs(json.loads(json.dumps(body)), signature))
      self.assertOutputsClose(_numpy(outputs), self.expected)

  def test_rest_floats_read_back_as_same_float32(self):
    body = serving.rest_request(self.config, self.rows, columnar=True)
    for name in ("item_domain_count", "item_domain_like_rate", "item_domain_love_rate"):
      decoded = np.array(json.loads(json.dumps(body))["inputs"][name], dtype=np.float32)
      self.assertAllEqual(decoded, self.columns[name], msg=name)

  def test_non_utf8_string_is_sent_as_b64(self):
    rows = [dict(self.rows[0], director=b"\xff\xfe")]
    body = serving.rest_request(self.config, rows)
    self.assertEqual(body["instances"][0]["director"], {"b64": "//4="})
    request = serving.predict_request(self.config, rows)
    self.assertEqual(tf.make_ndarray(request.inputs["director"]).tolist(), [b"\xff\xfe"])
    signature = self.loaded.signatures["serving_default"]
    outputs = signature(**_rest_inputs(json.loads(json.dumps(body)), signature))
    self.assertOutputsClose(_numpy(outputs), self.expected_for(rows))

  # The request CLI and the docs.

  def test_request_cli_prints_rest_body(self):
    process = subprocess.run(
        [sys.executable, "-m", "trainers.request", f"--model_dir={self.model_dir}",
         "--split=valid", "--row=2", "--num_rows=3", "--format=rest"],
        cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    self.assertEqual(process.returncode, 0, msg=process.stderr[-3000:])
    self.assertEqual(json.loads(process.stdout),
                     serving.rest_request(self.config, self.rows[2:5]))

    process = subprocess.run(
        [sys.executable, "-m", "trainers.request", f"--model_dir={self.model_dir}",
         "--split=valid", "--row=10000"],
        cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    self.assertEqual(process.returncode, 1)
    self.assertIn("Rows 10000 to 10000 were requested", process.stderr)
    self.assertIn("has 10000 rows", process.stderr)

  def test_split_request_grpc_text_parses(self):
    text = serving.format_split_request(self.model_dir, "valid", row=0, num_rows=2,
                                        request_format="grpc")
    request = text_format.Parse(text, predict_pb2.PredictRequest())
    self.assertEqual(request, serving.predict_request(self.config, self.rows[:2]))

  def test_split_request_rejects_invalid_arguments(self):
    with self.assertRaisesRegex(ValueError, r"has no test files"):
      serving.format_split_request(self.model_dir, "test")
    with self.assertRaisesRegex(ValueError, r"`request_format` must be one of"):
      serving.format_split_request(self.model_dir, "valid", request_format="xml")
    with self.assertRaisesRegex(ValueError, r"is not the model_dir of a training run"):
      serving.format_split_request(self.temp_dir, "valid")

  def test_docs_requests_are_cli_output(self):
    blocks = _marked_blocks(_docs_text(), "request")
    self.assertLen(blocks, 3)
    for arguments, code in blocks:
      flags = dict(argument.lstrip("-").split("=", 1) for argument in shlex.split(arguments))
      text = serving.format_split_request(
          self.model_dir, flags["split"], row=int(flags["row"]),
          request_format=flags["format"])
      self.assertEqual(code.strip(), text, msg=arguments)

  def test_docs_commands_use_defined_flags(self):
    defined = {"model_dir", "split", "row", "num_rows", "format", "model_name"}
    commands = re.findall(r"python -m trainers\.request ([^\n>]*)", _docs_text())
    self.assertNotEmpty(commands)
    for command in commands:
      flags = {argument.lstrip("-").split("=", 1)[0] for argument in shlex.split(command)}
      self.assertEmpty(flags - defined, msg=command)

  def test_docs_grpc_example_against_local_server(self):
    blocks = _marked_blocks(_docs_text(), "grpc-example")
    self.assertLen(blocks, 1)
    code = blocks[0][1]
    self.assertIn('"localhost:8500"', code)
    self.assertIn('"runs/movielens/feature_config.json"', code)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        _StandInPredictionService(self.loaded, "pepnet"), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
      code = code.replace('"localhost:8500"', f'"127.0.0.1:{port}"').replace(
          '"runs/movielens/feature_config.json"',
          repr(os.path.join(self.model_dir, "feature_config.json")))
      namespace = {}
      exec(compile(code, _DOCS, "exec"), namespace)  # pylint: disable=exec-used
    finally:
      server.stop(None)
    documented = serving.rows_to_columns(self.config, namespace["rows"])
    for name, values in serving.rows_to_columns(self.config, self.rows[:1]).items():
      self.assertAllEqual(documented[name], values, msg=name)
    self.assertOutputsClose(namespace["probabilities"], self.expected_for(self.rows[:1]))

  def test_model_config_parses(self):
    with open(_MODEL_CONFIG, encoding="utf-8") as handle:
      config = text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
    models = config.model_config_list.config
    self.assertLen(models, 1)
    self.assertEqual(models[0].name, "pepnet")
    self.assertEqual(models[0].base_path, "/models/pepnet")
    self.assertEqual(models[0].model_platform, "tensorflow")
    self.assertEqual(models[0].model_version_policy.latest.num_versions, 2)
    self.assertIn("--model_config_file=/models/models.config", _docs_text())
    self.assertIn('-v "$PWD/serving/models.config:/models/models.config"', _docs_text())


if __name__ == "__main__":
  tf.test.main()
