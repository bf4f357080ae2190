"""Tests of the tf.data input pipeline on small CSV and TFRecord files."""

import itertools
import os

from absl import logging as absl_logging
from absl.testing import parameterized
import pepnet_tf  # noqa: F401  (selects Keras 2 before TensorFlow is used)
import tensorflow as tf

from pepnet_tf import features as features_lib
from pepnet_tf import input as input_lib

MISSING = features_lib.MISSING_LABEL
COLUMNS = ("user_id", "note", "price", "tab", "city", "click", "like")
FORMATS = (("csv", "csv"), ("tfrecord", "tfrecord"))


def make_config(file_format, domain_values=("home", "search"), on_unknown="error",
                price_default=0.0, domain_dtype="string"):
  return features_lib.from_dict({
      "format": file_format,
      "domain": {"feature": "tab", "values": list(domain_values), "on_unknown": on_unknown},
      "features": [
          {"name": "user_id", "group": "prior", "dtype": "int64", "hash_buckets": 100},
          {"name": "price", "group": "general", "dtype": "float32",
           "boundaries": [1.0, 10.0], "default": price_default},
          {"name": "tab", "group": "domain", "dtype": domain_dtype},
          {"name": "city", "group": "domain_side", "dtype": "string", "hash_buckets": 10},
          {"name": "click", "group": "label"},
          {"name": "like", "group": "label"},
      ],
  })


def make_rows(count, first_user=0):
  """Return rows as dicts of CSV field strings, where "" is an empty field."""
  rows = []
  for index in range(count):
    user = first_user + index
    rows.append({
        "user_id": str(user),
        "note": f"note {user}",  # Not in the config: must be ignored.
        "price": f"{user * 0.5:g}",
        "tab": ("home", "search")[user % 2],
        "city": ("beijing", "shanghai", "shenzhen")[user % 3],
        "click": str(user % 2),
        "like": "" if user % 3 == 0 else str((user // 2) % 2),
    })
  return rows


def write_csv(path, rows, columns=COLUMNS, delimiter=",", line_end="\n"):
  with open(path, "w", encoding="utf-8", newline="") as handle:
    handle.write(delimiter.join(columns) + line_end)
    for row in rows:
      handle.write(delimiter.join(row.get(column, "") for column in columns) + line_end)
  return path


def write_tfrecord(path, rows):
  """Write rows as tf.Example records. An empty value leaves the feature out."""
  with tf.io.TFRecordWriter(path) as writer:
    for row in rows:
      writer.write(make_example(row))
  return path


def make_example(row):
  feature = {}
  for name, value in row.items():
    if value == "":
      continue
    if name in ("user_id", "click", "like") or (name == "tab" and value.lstrip("-").isdigit()):
      feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    elif name == "price":
      feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[float(value)]))
    else:
      feature[name] = tf.train.Feature(
          bytes_list=tf.train.BytesList(value=[value.encode("utf-8")]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def to_numpy(batches):
  """Return the batches as lists of numpy values for equality checks."""
  return [tf.nest.map_structure(lambda tensor: tensor.numpy().tolist(), batch)
          for batch in batches]


def user_ids(batches):
  return [user for features, _ in batches for user in features["user_id"].numpy().tolist()]


class InputTest(tf.test.TestCase, parameterized.TestCase):

  def write(self, file_format, rows, name="data"):
    path = os.path.join(self.get_temp_dir(), f"{name}.{file_format}")
    if file_format == "csv":
      return write_csv(path, rows)
    return write_tfrecord(path, rows)

  def read(self, file_format, rows, batch_size=4, **kwargs):
    path = self.write(file_format, rows)
    config = kwargs.pop("config", None) or make_config(file_format)
    kwargs.setdefault("training", False)
    return list(input_lib.make_dataset(config, [path], batch_size, **kwargs))

  def assert_fails(self, file_format, rows, pattern, **kwargs):
    """Check that make_dataset and validate_files both reject `rows` with `pattern`."""
    path = self.write(file_format, rows, name="bad")
    config = kwargs.pop("config", None) or make_config(file_format)
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, pattern):
      list(input_lib.make_dataset(config, [path], 4, training=False, **kwargs))
    with self.assertRaisesRegex(features_lib.FeatureConfigError, pattern):
      input_lib.validate_files(config, [path])

  # Contents, shapes and dtypes.

  @parameterized.named_parameters(("evaluation", False), ("training", True))
  def test_formats_give_identical_batches(self, training):
    rows = make_rows(10)
    from_csv = self.read("csv", rows, training=training, epochs=2)
    from_tfrecord = self.read("tfrecord", rows, training=training, epochs=2)
    self.assertLen(from_csv, 6 if training else 3)
    self.assertEqual(to_numpy(from_csv), to_numpy(from_tfrecord))

  @parameterized.named_parameters(*FORMATS)
  def test_values_in_file_order(self, file_format):
    batches = self.read(file_format, make_rows(6), batch_size=6)
    features, labels = batches[0]
    self.assertAllEqual(features["user_id"], [0, 1, 2, 3, 4, 5])
    self.assertAllClose(features["price"], [0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    self.assertAllEqual(features["tab"], [b"home", b"search"] * 3)
    self.assertAllEqual(features["city"], [b"beijing", b"shanghai", b"shenzhen"] * 2)
    self.assertAllEqual(labels["click"], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0])

  @parameterized.named_parameters(*FORMATS)
  def test_missing_label_is_minus_one(self, file_format):
    batches = self.read(file_format, make_rows(6), batch_size=6)
    # "like" is empty (CSV) or absent (tf.Example) for users 0 and 3.
    self.assertAllEqual(batches[0][1]["like"], [MISSING, 0.0, 1.0, MISSING, 0.0, 0.0])

  @parameterized.named_parameters(*FORMATS)
  def test_stored_minus_one_label_is_missing(self, file_format):
    rows = make_rows(2)
    rows[1]["click"] = "-1"
    batches = self.read(file_format, rows)
    self.assertAllEqual(batches[0][1]["click"], [0.0, MISSING])

  @parameterized.named_parameters(*FORMATS)
  def test_batch_shapes_and_dtypes(self, file_format):
    batches = self.read(file_format, make_rows(10), batch_size=4)
    self.assertEqual([len(features["user_id"]) for features, _ in batches], [4, 4, 2])
    features, labels = batches[0]
    self.assertCountEqual(features, ["user_id", "price", "tab", "city"])
    self.assertCountEqual(labels, ["click", "like"])
    expected_dtypes = {"user_id": tf.int64, "price": tf.float32, "tab": tf.string,
                       "city": tf.string}
    for name, tensor in features.items():
      self.assertEqual(tensor.dtype, expected_dtypes[name], name)
      self.assertEqual(tensor.shape, (4,), name)
    for name, tensor in labels.items():
      self.assertEqual(tensor.dtype, tf.float32, name)
      self.assertEqual(tensor.shape, (4,), name)

  @parameterized.named_parameters(*FORMATS)
  def test_drop_remainder_gives_static_batch(self, file_format):
    path = self.write(file_format, make_rows(10))
    dataset = input_lib.make_dataset(make_config(file_format), [path], 4, training=True,
                                     epochs=2, drop_remainder=True)
    features_spec, labels_spec = dataset.element_spec
    self.assertEqual(features_spec["user_id"].shape, (4,))
    self.assertEqual(labels_spec["click"].shape, (4,))
    self.assertLen(list(dataset), 4)

  @parameterized.named_parameters(*FORMATS)
  def test_extra_columns_ignored(self, file_format):
    features, labels = self.read(file_format, make_rows(3))[0]
    self.assertNotIn("note", features)
    self.assertNotIn("note", labels)

  @parameterized.named_parameters(*FORMATS)
  def test_int64_domain_values(self, file_format):
    rows = make_rows(4)
    for row in rows:
      row["tab"] = "7" if row["tab"] == "home" else "9"
    config = make_config(file_format, domain_values=(7, 9), domain_dtype="int64")
    features, _ = self.read(file_format, rows, config=config)[0]
    self.assertAllEqual(features["tab"], [7, 9, 7, 9])
    self.assertEqual(features["tab"].dtype, tf.int64)

  @parameterized.named_parameters(*FORMATS)
  def test_missing_value_takes_default(self, file_format):
    rows = make_rows(2)
    rows[1]["price"] = ""
    config = make_config(file_format, price_default=-5.0)
    features, _ = self.read(file_format, rows, config=config)[0]
    self.assertAllClose(features["price"], [0.0, -5.0])

  def test_csv_quotes_and_delimiter(self):
    path = os.path.join(self.get_temp_dir(), "quoted.csv")
    with open(path, "w", encoding="utf-8") as handle:
      handle.write("user_id;note;price;tab;city;click;like\n")
      handle.write('1;"a; b ""c""";"2.5";home;"new; york";1;0\n')
    raw = make_config("csv").to_dict()
    raw["csv_delimiter"] = ";"
    config = features_lib.from_dict(raw)
    features, labels = next(iter(input_lib.make_dataset(config, [path], 4, training=False)))
    self.assertAllClose(features["price"], [2.5])
    self.assertAllEqual(features["city"], [b"new; york"])
    self.assertAllEqual(labels["click"], [1.0])

  def test_csv_field_pattern_matches_decode_csv(self):
    # Every line of up to 5 characters from `a`, `,` and `"`: the pattern accepts
    # exactly the lines that decode_csv splits into 3 fields.
    field = input_lib._any_csv_field(",")  # pylint: disable=protected-access
    lines = ["".join(chars) for length in range(6)
             for chars in itertools.product('a,"', repeat=length)]
    matches = tf.strings.regex_full_match(lines, r"\x2c".join([field] * 3)).numpy()
    for line, match in zip(lines, matches):
      try:
        tf.io.decode_csv([line], [[""]] * 3)
        decoded = True
      except tf.errors.InvalidArgumentError:
        decoded = False
      self.assertEqual(bool(match), decoded, line)

  def test_csv_crlf_line_endings(self):
    path = write_csv(os.path.join(self.get_temp_dir(), "crlf.csv"), make_rows(3),
                     line_end="\r\n")
    features, labels = next(iter(input_lib.make_dataset(make_config("csv"), [path], 4,
                                                        training=False)))
    self.assertAllEqual(features["city"], [b"beijing", b"shanghai", b"shenzhen"])
    self.assertAllEqual(labels["like"], [MISSING, 0.0, 1.0])

  # Order, epochs and sharding.

  @parameterized.named_parameters(*FORMATS)
  def test_resume_gives_same_epoch_batches(self, file_format):
    path = self.write(file_format, make_rows(40))
    config = make_config(file_format)
    steps = input_lib.steps_per_epoch(40, 8)

    def batches(initial_epoch):
      dataset = input_lib.make_dataset(config, [path], 8, training=True, seed=3,
                                       initial_epoch=initial_epoch, epochs=4)
      return to_numpy(dataset)

    from_start = batches(0)
    resumed = batches(2)
    self.assertLen(from_start, 4 * steps)
    self.assertEqual(from_start[2 * steps:], resumed)
    self.assertEqual(from_start, batches(0))

  @parameterized.named_parameters(*FORMATS)
  def test_epochs_are_distinct_permutations(self, file_format):
    path = self.write(file_format, make_rows(40))
    dataset = input_lib.make_dataset(make_config(file_format), [path], 8, training=True,
                                     epochs=3)
    users = user_ids(dataset)
    epochs = [users[index * 40:(index + 1) * 40] for index in range(3)]
    for epoch in epochs:
      self.assertCountEqual(epoch, range(40))
    self.assertNotEqual(epochs[0], epochs[1])
    self.assertNotEqual(epochs[1], epochs[2])
    self.assertNotEqual(epochs[0], list(range(40)))

  def test_seed_changes_order(self):
    path = self.write("tfrecord", make_rows(40))
    orders = [user_ids(input_lib.make_dataset(make_config("tfrecord"), [path], 8,
                                              training=True, seed=seed))
              for seed in (0, 1)]
    self.assertNotEqual(orders[0], orders[1])

  def test_batches_do_not_span_epochs(self):
    path = self.write("tfrecord", make_rows(10))
    dataset = input_lib.make_dataset(make_config("tfrecord"), [path], 4, training=True,
                                     epochs=2)
    self.assertEqual([len(features["user_id"]) for features, _ in dataset], [4, 4, 2] * 2)

  def test_evaluation_order_is_fixed(self):
    paths = [self.write("tfrecord", make_rows(5, first_user=10 * index), name=f"part{index}")
             for index in range(3)]
    users = [user_ids(input_lib.make_dataset(make_config("tfrecord"), paths, 4,
                                             training=False)) for _ in range(2)]
    self.assertEqual(users[0], users[1])
    self.assertCountEqual(users[0], [10 * part + row for part in range(3) for row in range(5)])

  @parameterized.named_parameters(("by_file", 3), ("by_record", 1))
  def test_sharding_partitions_rows(self, num_files):
    paths = [self.write("csv", make_rows(9, first_user=100 * index), name=f"part{index}")
             for index in range(num_files)]
    shards = []
    for pipeline_id in range(2):
      context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                           num_replicas_in_sync=2)
      dataset = input_lib.make_dataset(make_config("csv"), paths, 4, training=True,
                                       input_context=context)
      shards.append(user_ids(dataset))
    self.assertNotEmpty(shards[0])
    self.assertNotEmpty(shards[1])
    self.assertEmpty(set(shards[0]) & set(shards[1]))
    expected = [100 * part + row for part in range(num_files) for row in range(9)]
    self.assertCountEqual(shards[0] + shards[1], expected)

  def test_input_fn_per_replica_batch(self):
    path = self.write("tfrecord", make_rows(8))
    dataset_fn = input_lib.input_fn(make_config("tfrecord"), [path], 4, training=False)
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    self.assertEqual([len(features["user_id"]) for features, _ in dataset_fn(context)],
                     [2, 2, 2, 2])

  # Domain values.

  @parameterized.named_parameters(*FORMATS)
  def test_unknown_domain_raises(self, file_format):
    rows = make_rows(4)
    rows[2]["tab"] = "video"
    where = "line 4" if file_format == "csv" else "record index 2"
    self.assert_fails(file_format, rows, rf"`video`.*bad\.{file_format} {where}")

  @parameterized.named_parameters(*FORMATS)
  def test_unknown_domain_dropped_and_counted(self, file_format):
    rows = make_rows(6)
    rows[1]["tab"] = "video"
    rows[4]["tab"] = "live"
    config = make_config(file_format, on_unknown="drop")
    counter = input_lib.DroppedRowCounter()
    # Saving or loading a SavedModel earlier in the same process lowers absl's
    # verbosity to WARNING, which would hide the INFO line checked here.
    previous_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.INFO)
    self.addCleanup(absl_logging.set_verbosity, previous_verbosity)
    with self.assertLogs(level="INFO") as logs:
      batches = self.read(file_format, rows, config=config, training=True, epochs=2,
                          dropped_rows=counter)
    self.assertCountEqual(user_ids(batches), [0, 2, 3, 5] * 2)
    self.assertEqual(counter.count, 4)
    self.assertTrue(any("epoch 1 ended" in line and line.endswith(": 4")
                        for line in logs.output), logs.output)
    input_lib.validate_files(config, [self.write(file_format, rows)])

  # Malformed input.

  def test_csv_wrong_field_count(self):
    rows = make_rows(3)
    rows[1]["user_id"] = "1,2"
    self.assert_fails("csv", rows, r"bad\.csv line 3: expected 7 fields .* splits into 8")

  @parameterized.named_parameters(("int64", "user_id", "12a", "an integer"),
                                  ("float32", "price", "1.5.2", "a number"))
  def test_csv_non_numeric_value(self, column, value, kind):
    rows = make_rows(3)
    rows[2][column] = value
    self.assert_fails("csv", rows,
                      rf"bad\.csv line 4: column `{column}` has value `{value}`.*{kind}")

  @parameterized.named_parameters(*FORMATS)
  def test_label_out_of_range(self, file_format):
    rows = make_rows(3)
    rows[1]["like"] = "2"
    if file_format == "csv":
      pattern = r"bad\.csv line 3: column `like` has value `2`"
    else:
      pattern = r"Label `like` has value `2` at .*bad\.tfrecord record index 1"
    self.assert_fails(file_format, rows, pattern)

  @parameterized.named_parameters(*FORMATS)
  def test_empty_value_without_default(self, file_format):
    rows = make_rows(3)
    rows[2]["user_id"] = ""
    if file_format == "csv":
      pattern = r"bad\.csv line 4: column `user_id` is empty.*no default"
    else:
      pattern = r"bad\.tfrecord record index 2, Feature: user_id .* is required"
    self.assert_fails(file_format, rows, pattern)

  def test_tfrecord_wrong_value_type(self):
    rows = make_rows(3)
    path = os.path.join(self.get_temp_dir(), "bad.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      writer.write(make_example(rows[0]))
      example = tf.train.Example.FromString(make_example(rows[1]))
      example.features.feature["user_id"].CopyFrom(
          tf.train.Feature(float_list=tf.train.FloatList(value=[1.5])))
      writer.write(example.SerializeToString())
    config = make_config("tfrecord")
    pattern = r"bad\.tfrecord record index 1, Key: user_id.*Data types don't match"
    with self.assertRaisesRegex(tf.errors.InvalidArgumentError, pattern):
      list(input_lib.make_dataset(config, [path], 4, training=False))
    with self.assertRaisesRegex(features_lib.FeatureConfigError, pattern):
      input_lib.validate_files(config, [path])

  def test_validate_names_corrupt_record(self):
    path = os.path.join(self.get_temp_dir(), "corrupt.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
      writer.write(make_example(make_rows(1)[0]))
      writer.write(b"not a tf.Example")
    with self.assertRaisesRegex(features_lib.FeatureConfigError,
                                r"corrupt\.tfrecord record index 1 is not a serialized"):
      input_lib.validate_files(make_config("tfrecord"), [path])

  def test_validate_names_non_tfrecord_file(self):
    path = os.path.join(self.get_temp_dir(), "garbage.tfrecord")
    with open(path, "wb") as handle:
      handle.write(b"user_id,price\n1,2.5\n")
    with self.assertRaisesRegex(features_lib.FeatureConfigError,
                                r"garbage\.tfrecord: corrupted record at 0"):
      input_lib.validate_files(make_config("tfrecord"), [path])

  @parameterized.named_parameters(*FORMATS)
  def test_missing_column(self, file_format):
    rows = [{key: value for key, value in row.items() if key != "city"}
            for row in make_rows(3)]
    if file_format == "csv":
      path = write_csv(os.path.join(self.get_temp_dir(), "bad.csv"), rows,
                       columns=[column for column in COLUMNS if column != "city"])
      with self.assertRaisesRegex(features_lib.FeatureConfigError,
                                  r"\['city'\].*missing from the header of .*bad\.csv"):
        input_lib.make_dataset(make_config("csv"), [path], 4, training=False)
    else:
      path = self.write(file_format, rows, name="bad")
      with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                  r"bad\.tfrecord record index 0, Feature: city"):
        list(input_lib.make_dataset(make_config(file_format), [path], 4, training=False))
    with self.assertRaisesRegex(features_lib.FeatureConfigError, r"\['city'\].*bad\."):
      input_lib.validate_files(make_config(file_format), [path])

  def test_csv_headers_must_match(self):
    first = write_csv(os.path.join(self.get_temp_dir(), "a.csv"), make_rows(2))
    second = write_csv(os.path.join(self.get_temp_dir(), "b.csv"), make_rows(2),
                       columns=list(reversed(COLUMNS)))
    with self.assertRaisesRegex(features_lib.FeatureConfigError,
                                r"a\.csv' and '.*b\.csv' have different header lines"):
      input_lib.make_dataset(make_config("csv"), [first, second], 4, training=False)

  # Files.

  def test_missing_file(self):
    path = os.path.join(self.get_temp_dir(), "absent.csv")
    with self.assertRaisesRegex(input_lib.InputFileNotFoundError, r"absent\.csv' not found"):
      input_lib.make_dataset(make_config("csv"), [path], 4, training=False)
    with self.assertRaises(FileNotFoundError):
      input_lib.validate_files(make_config("csv"), [path])

  def test_empty_glob(self):
    pattern = os.path.join(self.get_temp_dir(), "nothing-*.tfrecord")
    with self.assertRaisesRegex(features_lib.FeatureConfigError,
                                r"No input file matches the pattern .*nothing-\*\.tfrecord"):
      input_lib.make_dataset(make_config("tfrecord"), [pattern], 4, training=False)

  def test_glob_expands_sorted(self):
    for index in (2, 0, 1):
      self.write("tfrecord", make_rows(1, first_user=index), name=f"glob-{index}")
    pattern = os.path.join(self.get_temp_dir(), "glob-*.tfrecord")
    paths = input_lib.expand_files([pattern, pattern])
    self.assertEqual([os.path.basename(path) for path in paths],
                     ["glob-0.tfrecord", "glob-1.tfrecord", "glob-2.tfrecord"])

  @parameterized.named_parameters(*FORMATS)
  def test_count_records(self, file_format):
    paths = [self.write(file_format, make_rows(count), name=f"count{count}")
             for count in (0, 3, 1030)]
    self.assertEqual(input_lib.count_records(make_config(file_format), paths), 1033)

  @parameterized.named_parameters(*FORMATS)
  def test_validate_accepts_good_files(self, file_format):
    path = self.write(file_format, make_rows(20))
    input_lib.validate_files(make_config(file_format), [path])

  def test_validate_reads_only_max_rows(self):
    rows = make_rows(6)
    rows[5]["price"] = "cheap"
    path = self.write("csv", rows)
    input_lib.validate_files(make_config("csv"), [path], max_rows=5)
    with self.assertRaisesRegex(features_lib.FeatureConfigError, r"line 7: column `price`"):
      input_lib.validate_files(make_config("csv"), [path], max_rows=6)

  def test_validate_rejects_files_without_rows(self):
    path = self.write("csv", [])
    with self.assertRaisesRegex(features_lib.FeatureConfigError, "contain no rows"):
      input_lib.validate_files(make_config("csv"), [path])

  # Arguments.

  @parameterized.named_parameters(
      ("batch_size", {"batch_size": 0}, "batch_size"),
      ("shuffle_buffer", {"shuffle_buffer": 0}, "shuffle_buffer"),
      ("initial_epoch", {"initial_epoch": 3, "epochs": 2}, "initial_epoch"))
  def test_invalid_arguments(self, arguments, name):
    path = self.write("csv", make_rows(2))
    arguments = {"batch_size": 4, **arguments}
    with self.assertRaisesRegex(ValueError, name):
      input_lib.make_dataset(make_config("csv"), [path], training=True, **arguments)

  def test_steps_per_epoch(self):
    self.assertEqual(input_lib.steps_per_epoch(10, 4), 3)
    self.assertEqual(input_lib.steps_per_epoch(10, 4, drop_remainder=True), 2)
    self.assertEqual(input_lib.steps_per_epoch(8, 4), 2)
    self.assertEqual(input_lib.steps_per_epoch(0, 4), 0)
    with self.assertRaisesRegex(ValueError, "batch_size"):
      input_lib.steps_per_epoch(10, 0)


if __name__ == "__main__":
  tf.test.main()


class CachedDatasetTest(tf.test.TestCase):

  def setUp(self):
    super().setUp()
    import synthetic  # pylint: disable=g-import-not-at-top
    self.paths = synthetic.write_dataset(self.get_temp_dir() + "/cached", "tfrecord",
                                         sizes=(250, 10, 10))
    self.config = features_lib.load(self.paths["feature_config"])

  def _epoch_keys(self, dataset, steps):
    """(user_id, item_id, age) of every row, per epoch of `steps` batches."""
    epochs, rows = [], []
    for step, (features, _) in enumerate(dataset, start=1):
      rows += list(zip(features["user_id"].numpy(), features["item_id"].numpy(),
                       features["age"].numpy()))
      if step % steps == 0:
        epochs.append(rows)
        rows = []
    return epochs

  def test_each_epoch_is_a_permutation_of_all_rows(self):
    dataset = input_lib.make_cached_dataset(self.config, [self.paths["train"]], 64, epochs=2)
    streamed = input_lib.make_dataset(self.config, [self.paths["train"]], 300, training=False)
    features, _ = next(iter(streamed))
    expected = sorted(zip(features["user_id"].numpy(), features["item_id"].numpy(),
                          features["age"].numpy()))
    epochs = self._epoch_keys(dataset, input_lib.steps_per_epoch(250, 64))
    self.assertLen(epochs, 2)
    self.assertEqual(sorted(epochs[0]), expected)
    self.assertEqual(sorted(epochs[1]), expected)
    self.assertNotEqual(epochs[0], epochs[1])

  def test_resumed_epoch_matches(self):
    steps = input_lib.steps_per_epoch(250, 64)
    full = input_lib.make_cached_dataset(self.config, [self.paths["train"]], 64, seed=3,
                                         epochs=3)
    resumed = input_lib.make_cached_dataset(self.config, [self.paths["train"]], 64, seed=3,
                                            initial_epoch=2, epochs=3)
    self.assertEqual(self._epoch_keys(full, steps)[2], self._epoch_keys(resumed, steps)[0])

  def test_pipelines_partition_rows(self):
    rows = []
    for pipeline_id in range(2):
      context = tf.distribute.InputContext(num_input_pipelines=2,
                                           input_pipeline_id=pipeline_id)
      dataset = input_lib.make_cached_dataset(self.config, [self.paths["train"]], 50,
                                              input_context=context)
      rows.append(self._epoch_keys(dataset, 3)[0])
    self.assertLen(rows[0], 125)
    self.assertLen(rows[1], 125)
    self.assertEmpty(set(rows[0]) & set(rows[1]))

  def test_labels_keep_missing_marker(self):
    dataset = input_lib.make_cached_dataset(self.config, [self.paths["train"]], 250)
    _, labels = next(iter(dataset))
    self.assertIn(-1.0, labels["like"].numpy().tolist())
