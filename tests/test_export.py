"""Tests of the SavedModel export: signatures, warmup file, guards and versioning.

One small model is trained once for the module with `training.train` on 2048 real
MovieLens-100K training rows (prepared into a temporary directory) and exported at
the end of training, with warmup rows from the real validation split. The tests load
that export the way TF Serving's users would: in a fresh process without pepnet_tf,
through `saved_model_cli`, and through its warmup records. No TF Serving binary runs
here.
"""

import collections
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from unittest import mock

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import movielens_run
from pepnet_tf import export as export_lib
from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib
from pepnet_tf import serving
from pepnet_tf import training

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DOCS = os.path.join(_REPO_ROOT, "docs", "SERVING.md")
_TRAIN_ROWS = 2048
_TOLERANCE = 1e-5
_TASKS = ("like", "love")
# tf.debugging.Assert prints the quotes of its message with backslashes.
_UNKNOWN_DOMAIN_MESSAGE = r"Unknown value of domain feature \\'domain\\'[\s\S]*\[7\]"

# The signatures of the MovieLens-100K model: input or output name -> (dtype, shape),
# as `saved_model_cli show --all` prints them.
_DEFAULT_INPUTS = {
    "user_id": "DT_INT64", "item_id": "DT_INT64", "director": "DT_STRING",
    "gender": "DT_STRING", "occupation": "DT_STRING", "zip_prefix": "DT_STRING",
    "release_year": "DT_INT64", "genre": "DT_STRING", "hour": "DT_INT64",
    "weekday": "DT_INT64", "item_domain_count": "DT_FLOAT",
    "item_domain_like_rate": "DT_FLOAT", "item_domain_love_rate": "DT_FLOAT",
    "domain": "DT_INT64",
}
_OUTPUTS = {task: ("DT_FLOAT", "(-1)") for task in _TASKS}
_EXPECTED_SIGNATURES = {
    "serving_default": {
        "inputs": {name: (dtype, "(-1)") for name, dtype in _DEFAULT_INPUTS.items()},
        "outputs": _OUTPUTS,
        "method": "tensorflow/serving/predict",
    },
    "serving_tf_example": {
        "inputs": {"examples": ("DT_STRING", "(-1)")},
        "outputs": _OUTPUTS,
        "method": "tensorflow/serving/predict",
    },
}

# Runs in a fresh interpreter with -I -S: only the virtualenv's site-packages is put
# on sys.path, without its .pth files, so the editable install of pepnet_tf is
# not importable.
_FRESH_PROCESS_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.append({site_packages!r})
    try:
      import pepnet_tf
      importable = True
    except ImportError:
      importable = False
    import numpy as np
    import tensorflow as tf

    data = np.load({npz!r})
    loaded = tf.saved_model.load({export_path!r})
    inputs = {{key[len("input/"):]: tf.constant(data[key])
              for key in data.files if key.startswith("input/")}}
    results = {{"pepnet_tf_importable": np.array(importable),
               "pepnet_tf_loaded": np.array(any(name.startswith("pepnet_tf")
                                                for name in sys.modules))}}
    outputs = loaded.signatures["serving_default"](**inputs)
    results.update({{"serving_default/" + task: value.numpy()
                    for task, value in outputs.items()}})
    outputs = loaded.signatures["serving_tf_example"](examples=tf.constant(data["examples"]))
    results.update({{"serving_tf_example/" + task: value.numpy()
                    for task, value in outputs.items()}})
    np.savez({result!r}, **results)
""")


def _tensors(config, columns):
  return {spec.name: tf.constant(columns[spec.name], dtype=serving.TF_DTYPES[spec.dtype])
          for spec in config.input_features}


def _numpy(outputs):
  return {name: np.asarray(value) for name, value in outputs.items()}


def parse_saved_model_cli(text):
  """Parse `saved_model_cli show --all` output into signature -> inputs, outputs, method."""
  signatures = {}
  current = section = name = None
  for line in text.splitlines():
    match = re.match(r"^signature_def\['(.+)'\]:$", line)
    if match:
      current = signatures.setdefault(match.group(1),
                                      {"inputs": {}, "outputs": {}, "method": None})
      continue
    if current is None:
      continue
    match = re.match(r"^\s+(inputs|outputs)\['(.+)'\] tensor_info:$", line)
    if match:
      section, name = match.groups()
      current[section][name] = [None, None]
      continue
    match = re.match(r"^\s+(dtype|shape): (.+)$", line)
    if match and section is not None:
      current[section][name][0 if match.group(1) == "dtype" else 1] = match.group(2)
      continue
    match = re.match(r"^\s+Method name is: (.*)$", line)
    if match:
      current["method"] = match.group(1)
      section = None
  for signature in signatures.values():
    for section in ("inputs", "outputs"):
      signature[section] = {key: tuple(value) for key, value in signature[section].items()}
  return signatures


def parse_docs_signature_table(text):
  """Parse the `| signature | input/output | name | dtype | shape |` rows of the docs."""
  signatures = collections.defaultdict(lambda: {"inputs": {}, "outputs": {}})
  for line in text.splitlines():
    cells = [cell.strip().strip("`") for cell in line.strip().strip("|").split("|")]
    if len(cells) == 5 and cells[0] in _EXPECTED_SIGNATURES:
      signature, kind, name, dtype, shape = cells
      signatures[signature][kind + "s"][name] = (dtype, shape)
  return dict(signatures)


class ExportTest(tf.test.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    result = movielens_run.train_small_model("pepnet_export_test_", _TRAIN_ROWS)
    cls.temp_dir = result["temp_dir"]
    cls.model_dir = result["model_dir"]
    cls.valid_files = result["valid_files"]
    cls.export_path = result["export_path"]
    cls.model, cls.config, _ = training.load_trained_model(cls.model_dir)
    cls.rows = serving.read_rows(cls.config, cls.valid_files, count=64)
    cls.columns = serving.rows_to_columns(cls.config, cls.rows)
    cls.expected = _numpy(cls.model(_tensors(cls.config, cls.columns), training=False))
    cls.loaded = tf.saved_model.load(cls.export_path)

  @classmethod
  def tearDownClass(cls):
    shutil.rmtree(cls.temp_dir, ignore_errors=True)
    super().tearDownClass()

  def serve(self, columns, loaded=None):
    signature = (loaded or self.loaded).signatures["serving_default"]
    return _numpy(signature(**_tensors(self.config, columns)))

  def serve_examples(self, rows, loaded=None):
    signature = (loaded or self.loaded).signatures["serving_tf_example"]
    examples = tf.constant(serving.serialize_examples(self.config, rows), dtype=tf.string)
    return _numpy(signature(examples=examples))

  def assertOutputsClose(self, actual, expected):
    self.assertEqual(sorted(actual), sorted(expected))
    for task in expected:
      self.assertAllClose(actual[task], expected[task], atol=_TOLERANCE, rtol=0,
                          msg=f"task {task}")

  # The export written by training.

  def test_training_export_is_one_version(self):
    export_base = os.path.dirname(self.export_path)
    self.assertEqual(os.path.basename(self.export_path),
                     str(export_lib.versions(export_base)[-1]))
    self.assertEqual(sorted(os.listdir(export_base)), [os.path.basename(self.export_path)])

  def test_warmup_records_hold_validation_rows(self):
    records = export_lib.read_warmup_file(os.path.join(self.export_path, export_lib.WARMUP_FILE))
    requests = [record.predict_log.request for record in records]
    self.assertEqual(
        [(request.model_spec.name, request.model_spec.signature_name) for request in requests],
        [("pepnet", "serving_default"), ("pepnet", "serving_tf_example")] * 2)
    batch_sizes = [len(next(iter(serving.request_inputs(request).values())))
                   for request in requests]
    self.assertEqual(batch_sizes, [1, 1, export_lib.DEFAULT_WARMUP_ROWS,
                                   export_lib.DEFAULT_WARMUP_ROWS])
    inputs = serving.request_inputs(requests[2])
    for spec in self.config.input_features:
      self.assertAllEqual(inputs[spec.name],
                          self.columns[spec.name][:export_lib.DEFAULT_WARMUP_ROWS],
                          msg=spec.name)

  def test_warmup_records_run_on_signatures(self):
    records = export_lib.read_warmup_file(os.path.join(self.export_path, export_lib.WARMUP_FILE))
    self.assertLen(records, 4)
    for record in records:
      request = record.predict_log.request
      inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
      signature = self.loaded.signatures[request.model_spec.signature_name]
      outputs = signature(**{name: tf.constant(value) for name, value in inputs.items()})
      batch_size = len(next(iter(inputs.values())))
      self.assertEqual(sorted(outputs), list(_TASKS))
      for task, value in outputs.items():
        self.assertEqual(value.dtype, tf.float32)
        self.assertEqual(value.shape, (batch_size,), msg=task)
        self.assertAllClose(value, self.expected[task][:batch_size], atol=_TOLERANCE, rtol=0)

  def test_warmup_rows_from_short_files(self):
    short = os.path.join(self.temp_dir, "valid_short.tfrecord")
    with tf.io.TFRecordWriter(short) as writer:
      for record in tf.data.TFRecordDataset(self.valid_files).take(3):
        writer.write(record.numpy())
    columns = export_lib.read_warmup_rows(self.config, [short])
    for name, values in columns.items():
      self.assertAllEqual(values, self.columns[name][:3], msg=name)
    empty = os.path.join(self.temp_dir, "valid_empty.tfrecord")
    with tf.io.TFRecordWriter(empty):
      pass
    self.assertIsNone(export_lib.read_warmup_rows(self.config, [empty]))

  # Loading without pepnet_tf.

  def test_fresh_process_without_pepnet_tf_matches_model(self):
    work_dir = tempfile.mkdtemp(dir=self.temp_dir)
    npz = os.path.join(work_dir, "inputs.npz")
    result = os.path.join(work_dir, "result.npz")
    arrays = {f"input/{name}": (values.astype(bytes) if values.dtype == object else values)
              for name, values in self.columns.items()}
    arrays["examples"] = np.array(serving.serialize_examples(self.config, self.rows),
                                  dtype=bytes)
    np.savez(npz, **arrays)
    script = _FRESH_PROCESS_SCRIPT.format(
        site_packages=sysconfig.get_paths()["purelib"], npz=npz,
        export_path=self.export_path, result=result)
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    process = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=work_dir,
                             env=env, capture_output=True, text=True, check=False)
    self.assertEqual(process.returncode, 0, msg=process.stderr[-3000:])

    outputs = np.load(result)
    self.assertFalse(outputs["pepnet_tf_importable"])
    self.assertFalse(outputs["pepnet_tf_loaded"])
    for signature in ("serving_default", "serving_tf_example"):
      for task in _TASKS:
        self.assertAllClose(outputs[f"{signature}/{task}"], self.expected[task],
                            atol=_TOLERANCE, rtol=0, msg=f"{signature}/{task}")

  def test_signatures_match_in_memory_model(self):
    self.assertOutputsClose(self.serve(self.columns), self.expected)
    self.assertOutputsClose(self.serve_examples(self.rows), self.expected)

  def test_saved_model_cli_lists_signatures(self):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    process = subprocess.run([cli, "show", "--all", "--dir", self.export_path],
                             capture_output=True, text=True, check=False)
    self.assertEqual(process.returncode, 0, msg=process.stderr[-3000:])
    signatures = parse_saved_model_cli(process.stdout)
    for name, expected in _EXPECTED_SIGNATURES.items():
      self.assertIn(name, signatures)
      self.assertEqual(signatures[name]["inputs"], expected["inputs"], msg=name)
      self.assertEqual(signatures[name]["outputs"], expected["outputs"], msg=name)
      self.assertEqual(signatures[name]["method"], expected["method"], msg=name)

  def test_docs_table_matches_signatures(self):
    with open(_DOCS, encoding="utf-8") as handle:
      documented = parse_docs_signature_table(handle.read())
    self.assertEqual(sorted(documented), sorted(_EXPECTED_SIGNATURES))
    for name, expected in _EXPECTED_SIGNATURES.items():
      self.assertEqual(documented[name]["inputs"], expected["inputs"], msg=name)
      self.assertEqual(documented[name]["outputs"], expected["outputs"], msg=name)

  def test_graph_uses_registered_core_ops_only(self):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(self.export_path, "saved_model.pb"), "rb") as handle:
      saved_model.ParseFromString(handle.read())
    op_types = set()
    for meta_graph in saved_model.meta_graphs:
      op_types.update(node.op for node in meta_graph.graph_def.node)
      for function in meta_graph.graph_def.library.function:
        op_types.update(node.op for node in function.node_def)
    self.assertIn("ParseExampleV2", op_types)
    self.assertIn("Assert", op_types)
    self.assertEmpty(op_types & {"PyFunc", "PyFuncStateless", "EagerPyFunc"})
    self.assertEmpty(sorted(op for op in op_types if not hasattr(tf.raw_ops, op)))

  def test_variables_are_model_weights_only(self):
    saved = tf.train.list_variables(os.path.join(self.export_path, "variables", "variables"))
    saved = [(name, tuple(shape)) for name, shape in saved
             if name != "_CHECKPOINTABLE_OBJECT_GRAPH"]
    for name, _ in saved:
      self.assertNotIn("optimizer", name)
    expected = [tuple(variable.shape) for variable in self.model.trainable_variables]
    # The dropout generator's state rides along with the PPNet layer; serving never
    # reads it.
    if self.model.ppnet.dropout_generator is not None:
      expected.append(tuple(self.model.ppnet.dropout_generator.state.shape))
    self.assertCountEqual([shape for _, shape in saved], expected)

  # Unusual requests.

  def test_unknown_ids_use_oov_rows(self):
    rows = [dict(row, user_id=10**12, item_id=-7, director="no such director")
            for row in self.rows[:4]]
    columns = serving.rows_to_columns(self.config, rows)
    features = _tensors(self.config, columns)
    domain_index = self.model.embeddings.domain_index(features)
    ids = self.model.embeddings.lookup(features, domain_index)
    for name in ("user_id", "item_id", "director"):
      # A vocabulary feature with one OOV bucket keeps its OOV row at index 0.
      self.assertAllEqual(ids[name], [0, 0, 0, 0], msg=name)
    logits = self.model.forward(self.model.embeddings.gather(ids), domain_index)
    expected = {task: tf.sigmoid(logit).numpy() for task, logit in logits.items()}
    self.assertOutputsClose(self.serve(columns), expected)
    self.assertOutputsClose(self.serve_examples(rows), expected)

  def test_unknown_domain_fails_naming_value(self):
    rows = [dict(self.rows[0]), dict(self.rows[1], domain=7)]
    columns = serving.rows_to_columns(self.config, rows)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                _UNKNOWN_DOMAIN_MESSAGE):
      self.serve(columns)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                _UNKNOWN_DOMAIN_MESSAGE):
      self.serve_examples(rows)

  def test_fallback_domain_and_default_value(self):
    raw = self.config.to_dict()
    raw["domain"]["fallback"] = 1
    for feature in raw["features"]:
      if feature["name"] == "hour":
        feature["default"] = 12
    fallback_config = features_lib.from_dict(raw)
    model = training.build_model(training.TrainConfig(model_dir="", hidden_units=[16]),
                                 fallback_config)
    model(_tensors(fallback_config, self.columns))
    for layer, trained_layer in zip(model.layers, self.model.layers):
      layer.set_weights(trained_layer.get_weights())
    path = export_lib.export_versioned(model, fallback_config,
                                       os.path.join(self.temp_dir, "fallback"),
                                       warmup_rows=self.columns)
    loaded = tf.saved_model.load(path)

    unknown = [dict(row, domain=7) for row in self.rows[:8]]
    fallback = [dict(row, domain=1) for row in self.rows[:8]]
    expected = self.serve(serving.rows_to_columns(self.config, fallback))
    self.assertOutputsClose(
        self.serve(serving.rows_to_columns(self.config, unknown), loaded), expected)
    self.assertOutputsClose(self.serve_examples(unknown, loaded), expected)

    # A tf.Example without `hour` parses as hour = 12, the config's default.
    with_default = [dict(row, hour=12) for row in self.rows[:8]]
    examples = []
    for row in self.rows[:8]:
      example = serving.make_example(self.config, row)
      del example.features.feature["hour"]
      examples.append(example.SerializeToString())
    outputs = _numpy(loaded.signatures["serving_tf_example"](examples=tf.constant(examples)))
    self.assertOutputsClose(outputs, self.serve_examples(with_default))

  def test_example_missing_feature_fails_naming_it(self):
    example = serving.make_example(self.config, self.rows[0])
    del example.features.feature["director"]
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                r"Feature: director \(data type: string\) is required"):
      self.loaded.signatures["serving_tf_example"](
          examples=tf.constant([example.SerializeToString()]))

  def test_missing_input_raises(self):
    inputs = _tensors(self.config, self.columns)
    del inputs["hour"]
    with self.assertRaises((TypeError, ValueError)):
      self.loaded.signatures["serving_default"](**inputs)

  def test_empty_batch_returns_empty_outputs(self):
    empty = {name: values[:0] for name, values in self.columns.items()}
    outputs = self.serve(empty)
    examples = self.loaded.signatures["serving_tf_example"](
        examples=tf.constant([], dtype=tf.string))
    for task in _TASKS:
      self.assertEqual(outputs[task].shape, (0,))
      self.assertEqual(examples[task].shape, (0,))

  def test_batch_of_4096_rows(self):
    dataset = input_lib.make_dataset(self.config, self.valid_files, 4096, training=False)
    features, _ = next(iter(dataset))
    outputs = _numpy(self.loaded.signatures["serving_default"](**features))
    expected = _numpy(self.model(features, training=False))
    for task in _TASKS:
      self.assertEqual(outputs[task].shape, (4096,))
    self.assertOutputsClose(outputs, expected)

  # Versioning.

  def test_export_cli_keeps_newest_versions(self):
    export_base = os.path.join(self.temp_dir, "cli_base")
    os.makedirs(export_base)
    for old in ("1", "2"):
      shutil.copytree(self.export_path, os.path.join(export_base, old))
    crashed = os.path.join(export_base, ".tmp-3-99999-deadbeef")
    os.makedirs(os.path.join(crashed, "variables"))
    started = int(time.time())

    process = subprocess.run(
        [sys.executable, "-m", "trainers.export", f"--model_dir={self.model_dir}",
         f"--export_base={export_base}", "--keep=2"],
        cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    self.assertEqual(process.returncode, 0, msg=process.stderr[-3000:])
    new_path = process.stdout.strip().splitlines()[-1]
    new_version = int(os.path.basename(new_path))
    self.assertGreaterEqual(new_version, started)
    self.assertEqual(export_lib.versions(export_base), [2, new_version])
    # A leftover temporary directory is not a version and stays for its owner to delete.
    self.assertCountEqual(os.listdir(export_base),
                          [".tmp-3-99999-deadbeef", "2", str(new_version)])
    self.assertIn("temporary directories of other exports", process.stderr)
    self.assertTrue(os.path.exists(os.path.join(new_path, export_lib.WARMUP_FILE)))
    loaded = tf.saved_model.load(new_path)
    self.assertOutputsClose(self.serve(self.columns, loaded), self.expected)

  def test_export_cli_rejects_missing_run(self):
    missing = os.path.join(self.temp_dir, "no_such_run")
    process = subprocess.run(
        [sys.executable, "-m", "trainers.export", f"--model_dir={missing}",
         f"--export_base={os.path.join(self.temp_dir, 'unused_base')}"],
        cwd=_REPO_ROOT, capture_output=True, text=True, check=False)
    self.assertEqual(process.returncode, 1, msg=process.stderr[-3000:])
    self.assertIn("is not the model_dir of a training run", process.stderr)
    self.assertFalse(os.path.exists(os.path.join(self.temp_dir, "unused_base")))

  def test_version_taken_during_export_moves_on(self):
    export_base = os.path.join(self.temp_dir, "race_base")
    os.makedirs(os.path.join(export_base, "1700000000"))
    # The listing misses version 1700000000, as if another export created it after
    # the listing; the rename then fails and the export takes the next number.
    with mock.patch.object(export_lib, "versions", return_value=[]), \
         mock.patch.object(export_lib.time, "time", return_value=1700000000.5):
      path = export_lib.export_versioned(self.model, self.config, export_base, keep=None,
                                         verify=False)
    self.assertEqual(path, os.path.join(export_base, "1700000001"))
    self.assertEqual(sorted(os.listdir(export_base)), ["1700000000", "1700000001"])
    self.assertEqual(os.listdir(os.path.join(export_base, "1700000000")), [])

  def test_existing_explicit_version_raises(self):
    export_base = os.path.join(self.temp_dir, "explicit_base")
    os.makedirs(os.path.join(export_base, "5"))
    with self.assertRaisesRegex(FileExistsError, "Version 5 already exists"):
      export_lib.export_versioned(self.model, self.config, export_base, version=5)
    self.assertEqual(os.listdir(export_base), ["5"])

  def test_failing_save_leaves_no_version(self):
    export_base = os.path.join(self.temp_dir, "failing_base")

    def partial_save(module, path, signatures=None):
      del module, signatures  # unused
      os.makedirs(os.path.join(path, "variables"))
      with open(os.path.join(path, "saved_model.pb"), "wb") as handle:
        handle.write(b"partial")
      raise OSError("disk full")

    with mock.patch.object(export_lib.tf.saved_model, "save", side_effect=partial_save):
      with self.assertRaisesRegex(OSError, "disk full"):
        export_lib.export_versioned(self.model, self.config, export_base)
    self.assertEqual(os.listdir(export_base), [])

  def test_verification_rejects_other_weights(self):
    other = training.build_model(training.TrainConfig(model_dir="", hidden_units=[16]),
                                 self.config)
    other(_tensors(self.config, self.columns))
    with self.assertRaisesRegex(export_lib.ExportVerificationError,
                                "differs from the in-memory model"):
      export_lib.verify_export(self.export_path, other, self.config, self.columns)

  def test_invalid_arguments_raise(self):
    export_base = os.path.join(self.temp_dir, "invalid_base")
    with self.assertRaisesRegex(ValueError, "`keep` must be an integer >= 1"):
      export_lib.export_versioned(self.model, self.config, export_base, keep=0)
    with self.assertRaisesRegex(ValueError, "`version` must be a non-negative integer"):
      export_lib.export_versioned(self.model, self.config, export_base, version=-1)
    bad_rows = dict(self.columns)
    del bad_rows["genre"]
    with self.assertRaisesRegex(ValueError, r"Missing feature\(s\) \['genre'\]"):
      export_lib.export_versioned(self.model, self.config, export_base, warmup_rows=bad_rows)
    self.assertEqual(export_lib.versions(export_base), [])
    self.assertEqual(os.listdir(export_base), [])


if __name__ == "__main__":
  tf.test.main()
