"""tf.data input pipeline: files of tf.Example records or CSV lines to batches.

`make_dataset` reads the files that a `FeatureConfig` describes and yields
`(features, labels)` batches:

- `features`: a dict from the name of every non-label feature
  (`config.input_features`, the raw domain column among them) to a `(batch_size,)`
  tensor of the feature's raw dtype (int64, float32 or string).
- `labels`: a dict from task name to a `(batch_size,)` float32 tensor of 1.0, 0.0, or
  `MISSING_LABEL` (-1.0) where the label is missing.

Records are batched before they are parsed (`tf.io.parse_example`, `tf.io.decode_csv`)
because parsing one record at a time is several times slower. Each record travels
with an int64 key, `file_index * 2**40 + index_in_file`, from which the checks name
the file and the line (CSV, counted from 1 with the header as line 1) or the record
index (TFRecord, counted from 0) of bad input. Bad input raises
`tf.errors.InvalidArgumentError` while the dataset is iterated. Before training,
`validate_files` runs the same checks on the first rows of every file and raises
`FeatureConfigError`.
"""

import csv
import os
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple

from absl import logging
from google.protobuf import message as protobuf_message
import tensorflow as tf

from pepnet_tf import domains
from pepnet_tf import features as features_lib

FeatureConfig = features_lib.FeatureConfig
FeatureConfigError = features_lib.FeatureConfigError

# A record key is `file_index * 2**_INDEX_BITS + index_in_file`.
_INDEX_BITS = 40
_MAX_FILES = 2**(63 - _INDEX_BITS)

# Records read from one file in a row: files are interleaved in runs of this many
# records. It is fixed, not tuned, because it is part of the record order.
_READ_CHUNK = 1024
# Files read at the same time. Fixed for the same reason: an AUTOTUNE value would
# depend on the machine and change the order, which exact resume relies on.
_FILES_READ_AT_ONCE = 16

_TF_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}

# Values of CSV fields without quotes. The CSV line check uses them, and
# `decode_csv` accepts every value that they match, except that a 19-digit integer
# above the int64 maximum matches and then fails in `decode_csv` without a file name.
_INT_VALUE = r"[+-]?[0-9]+"
_FLOAT_VALUE = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_LABEL_VALUE = r"(?:-1|0|1)(?:\.0*)?"
_STRING_VALUE = r".+"
_VALUE_PATTERNS = {"int64": _INT_VALUE, "float32": _FLOAT_VALUE, "string": _STRING_VALUE}
_VALUE_NAMES = {"int64": "an integer (int64)", "float32": "a number (float32)",
                "string": "a string"}


class InputFileNotFoundError(FeatureConfigError, FileNotFoundError):
  """Raised when an input file or glob pattern matches no file."""


class DroppedRowCounter:
  """Counter of the rows dropped for an unknown domain value (`on_unknown="drop"`).

  The pipeline adds to the counter while it parses batches, so with prefetching the
  count can run a few batches ahead of what the model has consumed. Create the counter
  outside any `tf.distribute` strategy scope: inside one, `tf.Variable` would become
  a distributed variable that the input pipeline cannot update.
  """

  def __init__(self):
    if tf.distribute.has_strategy():
      raise ValueError(
          "DroppedRowCounter was created inside a tf.distribute strategy scope. Create "
          "it outside the scope and pass it to make_dataset or input_fn as dropped_rows.")
    with tf.init_scope(), tf.device("/cpu:0"):
      self.variable = tf.Variable(0, dtype=tf.int64, trainable=False, name="dropped_rows")

  @property
  def count(self) -> int:
    return int(self.variable.numpy())


def make_dataset(config: FeatureConfig,
                 files: Sequence[str],
                 batch_size: int,
                 *,
                 training: bool,
                 seed: int = 0,
                 initial_epoch: int = 0,
                 epochs: int = 1,
                 shuffle_buffer: int = 100_000,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 drop_remainder: bool = False,
                 dropped_rows: Optional[DroppedRowCounter] = None) -> tf.data.Dataset:
  """Build the `(features, labels)` batches of `files`.

  With `training=True` the dataset covers epochs `initial_epoch .. epochs - 1` in
  sequence, and every epoch has its own order, derived only from `(seed, epoch)`:
  the file order is shuffled, files are read 16 at a time in runs of 1024 records,
  and every `shuffle_buffer` consecutive records are permuted together. With the same
  files, batch size, shuffle buffer and input context, an epoch's batches are
  therefore the same whether training started at epoch 0 or resumes at that epoch.
  No batch spans two epochs, so `model.fit(dataset, epochs=epochs,
  initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch(count_records(...),
  batch_size))` resumes exactly.
  With `training=False` the dataset is one pass in a fixed order without shuffling.

  Example:

      dataset = make_dataset(config, ["data/train-*.tfrecord"], 1024, training=True,
                             epochs=10)
      features, labels = next(iter(dataset))  # labels["click"].shape == (1024,)

  Args:
    config: the dataset's feature config; `config.format` selects TFRecord files of
      serialized `tf.train.Example` or CSV files with a header line.
    files: paths or glob patterns, expanded by `expand_files`.
    batch_size: int, rows per batch of this input pipeline (per replica under a
      distribution strategy).
    training: bool, shuffled epochs (True) or one fixed-order pass (False).
    seed: int, seed of the shuffling. Defaults to 0.
    initial_epoch: int, first epoch of the stream (training only). Defaults to 0.
    epochs: int, the stream ends before this epoch (training only). Defaults to 1.
    shuffle_buffer: int, number of consecutive records permuted together (training
      only), and 1 keeps the records of the interleaved files in order. The pipeline
      holds up to about three times this many serialized records in memory: a block
      being read, a permuted block ready, and a block being cut into batches.
      Defaults to 100_000.
    input_context: `tf.distribute.InputContext` of this pipeline, or None for a single
      pipeline. Pipelines split the files when there are at least as many files as
      pipelines, else they split every file's records by index.
    drop_remainder: bool, drop the last, smaller batch of each epoch. Defaults to
      False.
    dropped_rows: counter of rows dropped for unknown domain values, used when
      `config.domain.on_unknown == "drop"`. Defaults to a new `DroppedRowCounter`.

  Returns:
    A `tf.data.Dataset` of `(features, labels)`. In "drop" mode a batch can lose rows
    (even all of them), but batches are never removed, so the step count stays
    `steps_per_epoch(...)` and the count is logged at the end of every pass.

  Raises:
    ValueError: for an invalid argument.
    FeatureConfigError: for a missing file, an empty glob match, or a CSV header
      that lacks a configured column. `InputFileNotFoundError` for the first two.
    tf.errors.InvalidArgumentError: while iterating, for bad input. The message names
      the file and the line or record. Bad input is a wrong field count, a non-numeric
      value in an int64 or float32 column, a label other than 0, 1 or missing, an
      empty value of a feature without default, or an unknown domain value with
      `on_unknown == "error"`.
    tf.errors.DataLossError: while iterating, for a corrupt TFRecord file. TensorFlow's
      message does not name the file; `validate_files` does for the first rows.
  """
  _check_positive_int("batch_size", batch_size)
  _check_positive_int("shuffle_buffer", shuffle_buffer)
  for name, value in (("seed", seed), ("initial_epoch", initial_epoch), ("epochs", epochs)):
    if not isinstance(value, int) or isinstance(value, bool):
      raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")
  if not 0 <= initial_epoch <= epochs:
    raise ValueError("`initial_epoch` must satisfy 0 <= initial_epoch <= epochs. "
                     f"Received: initial_epoch={initial_epoch}, epochs={epochs}")

  paths = expand_files(files)
  reader = _RecordReader(config, paths)
  count_drops = config.domain.on_unknown == "drop"
  if count_drops and dropped_rows is None:
    dropped_rows = DroppedRowCounter()
  parser = _BatchParser(config, reader, dropped_rows if count_drops else None)

  file_indices = list(range(len(paths)))
  record_shard = None
  if input_context is not None and input_context.num_input_pipelines > 1:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    if len(paths) >= num_pipelines:
      file_indices = file_indices[pipeline_id::num_pipelines]
    else:
      record_shard = (num_pipelines, pipeline_id)

  def one_pass(epoch: Optional[tf.Tensor]) -> tf.data.Dataset:
    indices = tf.constant(file_indices, dtype=tf.int64)
    epoch_seed = None
    if epoch is not None:
      epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
      indices = tf.random.experimental.stateless_shuffle(
          indices, seed=tf.random.experimental.stateless_fold_in(epoch_seed, 0))
    chunks = tf.data.Dataset.from_tensor_slices(indices).interleave(
        lambda index: reader.file_chunks(index, record_shard=record_shard),
        cycle_length=min(len(file_indices), _FILES_READ_AT_ONCE),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True)
    if epoch_seed is not None and shuffle_buffer > 1:
      chunks = _permute_blocks(chunks, shuffle_buffer, epoch_seed)
    batches = chunks.rebatch(batch_size, drop_remainder=drop_remainder)
    batches = batches.map(parser, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if count_drops:
      batches = batches.concatenate(_log_dropped_rows(batches.element_spec, dropped_rows,
                                                      config, epoch))
    return batches

  if training:
    dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_pass)
  else:
    dataset = one_pass(None)
  return dataset.prefetch(tf.data.AUTOTUNE)


def make_cached_dataset(config: FeatureConfig,
                        files: Sequence[str],
                        batch_size: int,
                        *,
                        seed: int = 0,
                        initial_epoch: int = 0,
                        epochs: int = 1,
                        input_context: Optional[tf.distribute.InputContext] = None,
                        drop_remainder: bool = False) -> tf.data.Dataset:
  """Training batches of `files`, parsed once and then served from memory.

  The files are read and checked once by the evaluation pipeline of `make_dataset`,
  and their columns are kept in memory. Every epoch then gathers its batches from a
  permutation of all rows that depends only on `(seed, epoch)`, so a resumed run gets
  the same batches as an uninterrupted one, and no batch spans two epochs. Parsing is
  most of the input cost, so this is several times faster than `make_dataset` for
  data that fits in memory; the row order differs from `make_dataset`'s.

  Args:
    config: the dataset's feature config.
    files: paths or glob patterns.
    batch_size: int, rows per batch of this input pipeline.
    seed: int, seed of the per-epoch permutations.
    initial_epoch: int, first epoch of the stream.
    epochs: int, the stream ends before this epoch.
    input_context: `tf.distribute.InputContext`, or None for a single pipeline; each
      pipeline keeps every `num_input_pipelines`-th row of the permutation.
    drop_remainder: bool, drop the last, smaller batch of each epoch.

  Returns:
    A `tf.data.Dataset` of `(features, labels)` batches, as `make_dataset`.
  """
  _check_positive_int("batch_size", batch_size)
  if not 0 <= initial_epoch <= epochs:
    raise ValueError("`initial_epoch` must satisfy 0 <= initial_epoch <= epochs. "
                     f"Received: initial_epoch={initial_epoch}, epochs={epochs}")
  batches = list(make_dataset(config, files, 4096, training=False))
  if not batches:
    raise FeatureConfigError(f"The files {list(files)} hold no rows.")
  # Every column concatenated over the batches: (num_rows,)
  columns = tf.nest.map_structure(lambda *parts: tf.concat(parts, axis=0), *batches)
  num_rows = int(tf.shape(tf.nest.flatten(columns)[0])[0])
  num_pipelines, pipeline_id = 1, 0
  if input_context is not None:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id

  def one_epoch(epoch: tf.Tensor) -> tf.data.Dataset:
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_rows, dtype=tf.int64),
        seed=tf.random.experimental.stateless_fold_in(epoch_seed, 0))
    # This pipeline's rows of the permutation: (num_rows / num_pipelines,)
    order = order[pipeline_id::num_pipelines]
    return tf.data.Dataset.from_tensor_slices(order).batch(
        batch_size, drop_remainder=drop_remainder)

  def gather_rows(indices: tf.Tensor):
    # (batch_size,) row indices -> every column's (batch_size,) values
    return tf.nest.map_structure(lambda column: tf.gather(column, indices), columns)

  dataset = tf.data.Dataset.range(initial_epoch, epochs).flat_map(one_epoch)
  dataset = dataset.map(gather_rows, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return dataset.prefetch(tf.data.AUTOTUNE)


def input_fn(config: FeatureConfig, files: Sequence[str], batch_size: int,
             **kwargs: Any) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
  """Return a dataset function for `strategy.distribute_datasets_from_function`.

  Args:
    config: the dataset's feature config.
    files: paths or glob patterns.
    batch_size: int, the global batch size; each input pipeline gets
      `input_context.get_per_replica_batch_size(batch_size)`.
    **kwargs: the keyword arguments of `make_dataset` other than `input_context`.
  """
  if "input_context" in kwargs:
    raise ValueError("input_fn passes its own input_context to make_dataset; "
                     "remove `input_context` from its arguments.")

  def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
    per_replica_batch_size = input_context.get_per_replica_batch_size(batch_size)
    return make_dataset(config, files, per_replica_batch_size,
                        input_context=input_context, **kwargs)

  return dataset_fn


def count_records(config: FeatureConfig, files: Sequence[str]) -> int:
  """Count the rows of `files`: TFRecord records, or CSV lines after the header."""
  paths = expand_files(files)
  is_csv = config.format == "csv"
  records = tf.data.Dataset.from_tensor_slices(tf.constant(paths)).flat_map(
      lambda path: _read_records(path, is_csv))
  sizes = records.batch(4096).map(lambda batch: tf.size(batch, out_type=tf.int64))
  return int(sizes.reduce(tf.constant(0, tf.int64), lambda total, size: total + size))


def validate_files(config: FeatureConfig, files: Sequence[str], max_rows: int = 1000) -> None:
  """Check `files` against `config` before training.

  Checks that every file exists and contains every configured column (in the header
  of a CSV file, in at least one of the first `max_rows` records of a TFRecord file).
  Then runs the checks of `make_dataset` on the first `max_rows` rows of every file:
  field counts, numeric values, labels, empty values of features without default,
  and domain values (unless `config.domain.on_unknown == "drop"`).

  Raises:
    FeatureConfigError: naming the file and the line or record of the first problem;
      `InputFileNotFoundError` for a missing file or an empty glob match.
  """
  _check_positive_int("max_rows", max_rows)
  paths = expand_files(files)
  reader = _RecordReader(config, paths)
  if config.format == "tfrecord":
    for path in paths:
      _check_tfrecord_columns(config, path, max_rows)

  parser = _BatchParser(config, reader, dropped_rows=None,
                        check_domains=config.domain.on_unknown == "error")

  def count_checked_rows(file_indices: List[int]) -> int:
    chunks = tf.data.Dataset.from_tensor_slices(tf.constant(file_indices, tf.int64)).flat_map(
        lambda index: reader.file_chunks(index, max_rows=max_rows))
    num_rows = 0
    for _, labels in chunks.map(parser):
      num_rows += int(tf.size(next(iter(labels.values()))))
    return num_rows

  try:
    num_rows = count_checked_rows(list(range(len(paths))))
  except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as error:
    text = _error_text(error)
    if not any(path in text for path in paths):
      # Some TensorFlow messages (a corrupt record or file) do not name the file, so
      # check the files one at a time to find it.
      for index, path in enumerate(paths):
        try:
          count_checked_rows([index])
        except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as file_error:
          raise FeatureConfigError(f"{path}: {_error_text(file_error)}") from error
    raise FeatureConfigError(text) from error
  if num_rows == 0:
    raise FeatureConfigError(f"The input files contain no rows: {paths}")


def steps_per_epoch(num_records: int, batch_size: int, drop_remainder: bool = False) -> int:
  """Return the number of batches in one epoch of `num_records` rows.

  NOTE: With several input pipelines, every pipeline ends its epoch after its own
  rows. This count matches each pipeline's batches only when the pipelines hold the
  same number of rows and `batch_size` is the global batch size.
  """
  if not isinstance(num_records, int) or num_records < 0:
    raise ValueError(
        f"`num_records` must be a non-negative integer. Received: num_records={num_records!r}")
  _check_positive_int("batch_size", batch_size)
  if drop_remainder:
    return num_records // batch_size
  return -(-num_records // batch_size)


def expand_files(files: Sequence[str]) -> List[str]:
  """Expand glob patterns in `files`; return the sorted paths without duplicates.

  Raises:
    InputFileNotFoundError: for a path that does not exist or a pattern that matches
      no file.
    FeatureConfigError: for an empty list or a directory.
  """
  if isinstance(files, (str, os.PathLike)):
    files = [files]
  if not files:
    raise FeatureConfigError("No input files given.")
  paths = set()
  for pattern in map(os.fspath, files):
    if any(char in pattern for char in "*?["):
      matches = tf.io.gfile.glob(pattern)
      if not matches:
        raise InputFileNotFoundError(f"No input file matches the pattern {pattern!r}.")
      paths.update(matches)
    elif tf.io.gfile.exists(pattern):
      paths.add(pattern)
    else:
      raise InputFileNotFoundError(f"Input file {pattern!r} not found.")
  directories = [path for path in paths if tf.io.gfile.isdir(path)]
  if directories:
    raise FeatureConfigError(
        f"Input paths {sorted(directories)} are directories. Give file paths or glob "
        "patterns such as 'dir/*.tfrecord'.")
  if len(paths) > _MAX_FILES:
    raise FeatureConfigError(f"At most {_MAX_FILES} input files are supported. "
                             f"Received: {len(paths)}")
  return sorted(paths)


def _check_positive_int(name: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")


# Reading: files to chunks of `(keys, records)`.


class _RecordReader:
  """Reader of the files of one format into keyed chunks, with the CSV header."""

  def __init__(self, config: FeatureConfig, paths: List[str]):
    self.config = config
    self.paths = paths
    self.is_csv = config.format == "csv"
    self.csv_columns: List[str] = []
    self.csv_has_carriage_returns = False
    if self.is_csv:
      _check_delimiter(config.csv_delimiter)
      self.csv_columns, self.csv_has_carriage_returns = _read_csv_header(config, paths)

  def file_chunks(self, file_index: tf.Tensor, *,
                  record_shard: Optional[Tuple[int, int]] = None,
                  max_rows: Optional[int] = None) -> tf.data.Dataset:
    """Return chunks `(keys, records)`, both `(chunk_size,)`, of one file.

    Args:
      file_index: int64 scalar, index of the file in `self.paths`.
      record_shard: `(num_pipelines, pipeline_id)` to keep only the records whose
        index in the file is `pipeline_id` modulo `num_pipelines`, or None.
      max_rows: read at most this many records of the file, or None for all.
    """
    records = _read_records(tf.gather(tf.constant(self.paths), file_index), self.is_csv)
    if max_rows is not None:
      records = records.take(max_rows)
    first_key = file_index * 2**_INDEX_BITS

    def add_keys(chunk_index, chunk):
      # chunk: (chunk_size,); keys count the records of the file from 0.
      indices = chunk_index * _READ_CHUNK + tf.range(tf.size(chunk, out_type=tf.int64))
      if record_shard is not None:
        num_pipelines, pipeline_id = record_shard
        mine = tf.equal(indices % num_pipelines, pipeline_id)
        return first_key + tf.boolean_mask(indices, mine), tf.boolean_mask(chunk, mine)
      return first_key + indices, chunk

    return records.batch(_READ_CHUNK).enumerate().map(add_keys)

  def describe_rows(self, keys: tf.Tensor) -> tf.Tensor:
    """Return "FILE line N" (CSV) or "FILE record index N" (TFRecord) for each key."""
    unit = " line " if self.is_csv else " record index "
    prefixes = tf.constant([path + unit for path in self.paths])
    indices = tf.bitwise.bitwise_and(keys, 2**_INDEX_BITS - 1)
    if self.is_csv:
      indices += 2  # Line 1 is the header, so data lines start at 2.
    return tf.strings.join([
        tf.gather(prefixes, tf.bitwise.right_shift(keys, _INDEX_BITS)),
        tf.strings.as_string(indices)])


def _check_delimiter(delimiter: str) -> None:
  if len(delimiter) != 1 or not delimiter.isascii() or delimiter in '"\r\n':
    raise FeatureConfigError(
        "csv_delimiter must be one ASCII character other than a quote or a line break, "
        f"as tf.io.decode_csv requires. Received: {delimiter!r}")


def _read_records(path: tf.Tensor, is_csv: bool) -> tf.data.Dataset:
  """Return the data lines of a CSV file or the serialized records of a TFRecord file."""
  if is_csv:
    return tf.data.TextLineDataset(path).skip(1)
  return tf.data.TFRecordDataset(path)


def _read_csv_header(config: FeatureConfig, paths: List[str]) -> Tuple[List[str], bool]:
  """Return the header columns shared by all `paths` and whether lines end in "\\r\\n"."""
  first_header = None
  for path in paths:
    with tf.io.gfile.GFile(path, "rb") as handle:
      line = handle.readline()
    if not line:
      raise FeatureConfigError(f"CSV file {path!r} is empty: the first line must be a "
                               "header that names the columns.")
    try:
      header = line.decode("utf-8").rstrip("\n")
    except UnicodeDecodeError as error:
      raise FeatureConfigError(
          f"The header line of CSV file {path!r} is not UTF-8: {error}") from error
    if first_header is None:
      first_header = (path, header)
    elif header != first_header[1]:
      raise FeatureConfigError(
          f"CSV files {first_header[0]!r} and {path!r} have different header lines "
          f"({first_header[1]!r} and {header!r}). All files of one dataset need the same "
          "columns in the same order.")
  _, header = first_header
  has_carriage_returns = header.endswith("\r")
  columns = next(csv.reader([header.rstrip("\r")], delimiter=config.csv_delimiter))
  duplicates = sorted({column for column in columns if columns.count(column) > 1})
  if duplicates:
    raise FeatureConfigError(f"The header of {paths[0]!r} names columns {duplicates} "
                             "more than once.")
  features_lib.check_columns(config, columns, f"the header of {paths[0]!r}")
  return columns, has_carriage_returns


def _check_tfrecord_columns(config: FeatureConfig, path: str, max_rows: int) -> None:
  """Check that every configured feature occurs in the first `max_rows` records.

  A record may lack a label (missing) or a feature with a default. So one record
  alone does not show which columns the file has, but the first records together do.
  """
  keys = set()
  num_records = 0
  try:
    for batch in tf.data.TFRecordDataset(path).take(max_rows).batch(_READ_CHUNK):
      for record in batch.numpy():
        try:
          example = tf.train.Example.FromString(record)
        except protobuf_message.DecodeError as error:
          raise FeatureConfigError(f"{path} record index {num_records} is not a serialized "
                                   f"tf.train.Example: {error}") from error
        keys.update(example.features.feature)
        num_records += 1
  except tf.errors.DataLossError as error:
    raise FeatureConfigError(f"{path}: {_error_text(error)}") from error
  if num_records:
    features_lib.check_columns(config, sorted(keys),
                               f"the first {num_records} records of {path}")


def _permute_blocks(chunks: tf.data.Dataset, block_size: int,
                    epoch_seed: tf.Tensor) -> tf.data.Dataset:
  """Permute every `block_size` consecutive records, seeded by `epoch_seed` and block."""

  def permute(block_index, block):
    keys, records = block  # (block_size,) each; the last block can be smaller.
    block_seed = tf.random.experimental.stateless_fold_in(epoch_seed, block_index)
    order = tf.random.experimental.stateless_shuffle(
        tf.range(tf.size(keys, out_type=tf.int64)), seed=block_seed)
    return tf.gather(keys, order), tf.gather(records, order)

  # Block indices start at 1 because fold-in value 0 seeds the file order. The
  # prefetch reads the next block while the batches of this one are parsed.
  return chunks.rebatch(block_size).enumerate(start=1).map(permute).prefetch(1)


def _log_dropped_rows(element_spec: Any, counter: DroppedRowCounter, config: FeatureConfig,
                      epoch: Optional[tf.Tensor]) -> tf.data.Dataset:
  """Return an empty dataset that logs the drop count when the pipeline reaches it.

  NOTE: `tf.py_function` runs only in the Python process that built the dataset, so
  drop mode probably fails where a dataset runs elsewhere (tf.data service,
  ParameterServerStrategy workers). Neither case is tested.
  """
  placeholder = tf.nest.map_structure(
      lambda spec: tf.zeros([0 if size is None else size for size in spec.shape], spec.dtype),
      element_spec)
  epoch = tf.constant(-1, tf.int64) if epoch is None else epoch

  def log(epoch_value, count):
    pass_name = "evaluation pass" if epoch_value < 0 else f"epoch {int(epoch_value)}"
    logging.info("Input %s ended. Rows dropped so far because domain feature %r had a "
                 "value outside domain.values: %d", pass_name, config.domain.feature, int(count))
    return False

  def log_and_skip(*_):
    keep = tf.py_function(log, [epoch, counter.variable.read_value()], tf.bool)
    return tf.reshape(keep, [])

  return tf.data.Dataset.from_tensors(placeholder).filter(log_and_skip)


# Parsing and checking whole batches.


class _BatchParser:
  """Parses a batch `(keys, records)` into `(features, labels)` and checks it."""

  def __init__(self, config: FeatureConfig, reader: _RecordReader,
               dropped_rows: Optional[DroppedRowCounter], check_domains: bool = True):
    self.config = config
    self.reader = reader
    self.dropped_rows = dropped_rows
    self.check_domains = check_domains
    self.domain_table = domains.domain_table(config) if check_domains else None
    if reader.is_csv:
      self._parse = _CsvParser(config, reader)
    else:
      self._parse = _TFRecordParser(config, reader)

  def __call__(self, keys: tf.Tensor, records: tf.Tensor):
    features, labels = self._parse(keys, records)
    if self.check_domains:
      features, labels = self._check_domain_values(keys, features, labels)
    return features, labels

  def _check_domain_values(self, keys, features, labels):
    domain = self.config.domain
    raw_values = features[domain.feature]
    indices = self.domain_table.lookup(domains.cast_domain_values(raw_values, self.config))
    unknown = tf.equal(indices, domains.UNKNOWN_DOMAIN)  # (batch_size,)

    if self.dropped_rows is not None:
      keep = tf.logical_not(unknown)
      counted = self.dropped_rows.variable.assign_add(
          tf.reduce_sum(tf.cast(unknown, tf.int64)), read_value=False)
      with tf.control_dependencies([counted]):
        return tf.nest.map_structure(lambda tensor: tf.boolean_mask(tensor, keep),
                                     (features, labels))

    def message():
      first = tf.argmax(tf.cast(unknown, tf.int32))
      values = tf.unique(tf.boolean_mask(raw_values, unknown)).y[:10]
      if values.dtype != tf.string:
        values = tf.strings.as_string(values)
      num_unknown = tf.reduce_sum(tf.cast(unknown, tf.int32))
      known = ", ".join(f"`{value}`" for value in domain.values)
      return tf.strings.join([
          "Unknown value(s) ",
          tf.strings.reduce_join(tf.strings.join(["`", values, "`"]), separator=", "),
          f" of domain feature `{domain.feature}` at ",
          self.reader.describe_rows(keys[first:first + 1])[0],
          ". Rows with an unknown value in this batch: ", tf.strings.as_string(num_unknown),
          f". Known values: {known}. Add the value to domain.values, or set "
          "domain.on_unknown to `drop` to skip such rows."])

    return _after_check(tf.logical_not(tf.reduce_any(unknown)), message, (features, labels))


class _TFRecordParser:
  """Parses serialized tf.train.Example records with one `parse_example` call."""

  def __init__(self, config: FeatureConfig, reader: _RecordReader):
    self.config = config
    self.reader = reader
    self.spec = {}
    for feature in config.input_features:
      dtype = _TF_DTYPES[feature.dtype]
      if feature.default is None:
        self.spec[feature.name] = tf.io.FixedLenFeature([], dtype)
      else:
        self.spec[feature.name] = tf.io.FixedLenFeature(
            [], dtype, default_value=_default_value(feature))
    # An absent label parses as MISSING_LABEL, so a stored -1 also reads as missing.
    for label in config.labels:
      dtype = _TF_DTYPES[label.dtype]
      missing = features_lib.MISSING_LABEL
      if label.dtype == "int64":
        missing = int(missing)
      self.spec[label.name] = tf.io.FixedLenFeature([], dtype, default_value=missing)

  def __call__(self, keys: tf.Tensor, records: tf.Tensor):
    # keys, records: (batch_size,). The names put the file and record index into
    # parse errors (a missing feature, a wrong value type, a corrupt record).
    parsed = tf.io.parse_example(records, self.spec,
                                 example_names=self.reader.describe_rows(keys))
    features = {feature.name: parsed[feature.name] for feature in self.config.input_features}
    labels = {label.name: tf.cast(parsed[label.name], tf.float32)
              for label in self.config.labels}

    # One check for all labels keeps the per-batch cost to one tf.cond.
    names = list(labels)
    values = tf.stack([labels[name] for name in names])  # (num_labels, batch_size)
    valid = (values == 0.0) | (values == 1.0) | (values == features_lib.MISSING_LABEL)
    return _after_check(tf.reduce_all(valid),
                        lambda: self._label_message(names, values, valid, keys),
                        (features, labels))

  def _label_message(self, names, values, valid, keys):
    """Return the error message for the first invalid label value of the batch."""
    invalid_rows = tf.reduce_any(tf.logical_not(valid), axis=0)  # (batch_size,)
    row = tf.argmax(tf.cast(invalid_rows, tf.int32))
    label = tf.argmin(tf.cast(valid[:, row], tf.int32))
    return tf.strings.join([
        "Label `", tf.gather(tf.constant(names), label), "` has value `",
        tf.strings.as_string(values[label, row], shortest=True), "` at ",
        self.reader.describe_rows(keys[row:row + 1])[0],
        ", but a label must be 0, 1, or missing (absent, or -1)."])


class _CsvParser:
  """Parses CSV lines with one regex check and one `decode_csv` call per batch.

  One regular expression per line checks the field count and every configured value
  (numbers, labels, non-empty values of features without default). When every line
  matches, `decode_csv` parses the numbers directly and can fail only on an int64
  overflow. Only a batch with a bad line pays for the diagnosis that names the column.
  """

  def __init__(self, config: FeatureConfig, reader: _RecordReader):
    self.config = config
    self.reader = reader
    self.columns = reader.csv_columns
    self.delimiter = config.csv_delimiter
    delimiter = _delimiter_pattern(config.csv_delimiter)
    any_field = _any_csv_field(config.csv_delimiter)
    self.any_line_pattern = delimiter.join([any_field] * len(self.columns))

    specs = {spec.name: spec for spec in config.features}
    # value_checks: (column, value pattern, description of a valid value).
    self.value_checks: List[Tuple[str, str, str]] = []
    field_patterns = []
    for column in self.columns:
      spec = specs.get(column)
      if spec is None:
        field_patterns.append(any_field)
        continue
      if spec.group == "label":
        value, allow_empty, description = _LABEL_VALUE, True, "0, 1, -1 or empty"
      else:
        value = _VALUE_PATTERNS[spec.dtype]
        allow_empty = spec.default is not None
        description = _VALUE_NAMES[spec.dtype]
      if spec.dtype == "string" and spec.group != "label":
        field = rf'[^{delimiter}"]+|"(?:[^"]|"")+"'
      else:
        field = f'{value}|"{value}"'
      field_patterns.append(f"(?:{field})?" if allow_empty else f"(?:{field})")
      self.value_checks.append(
          (column, f"(?:{value})?" if allow_empty else value, description))
    self.line_pattern = delimiter.join(field_patterns)

    # decode_csv returns the selected columns in file order.
    self.selected = [index for index, column in enumerate(self.columns) if column in specs]
    self.record_defaults = []
    for index in self.selected:
      spec = specs[self.columns[index]]
      if spec.group == "label":
        self.record_defaults.append(tf.constant([features_lib.MISSING_LABEL], tf.float32))
      elif spec.default is None:
        self.record_defaults.append(tf.constant([], _TF_DTYPES[spec.dtype]))
      else:
        self.record_defaults.append(
            tf.constant([_default_value(spec)], _TF_DTYPES[spec.dtype]))

  def __call__(self, keys: tf.Tensor, lines: tf.Tensor):
    # keys, lines: (batch_size,)
    if self.reader.csv_has_carriage_returns:
      lines = tf.strings.regex_replace(lines, "\r$", "")
    valid = tf.strings.regex_full_match(lines, self.line_pattern)
    checked = _check(tf.reduce_all(valid), lambda: self._message(keys, lines, valid))
    with tf.control_dependencies([checked]):
      values = tf.io.decode_csv(lines, self.record_defaults, field_delim=self.delimiter,
                                select_cols=self.selected)
    by_name = {self.columns[index]: column for index, column in zip(self.selected, values)}
    features = {feature.name: by_name[feature.name] for feature in self.config.input_features}
    labels = {label.name: by_name[label.name] for label in self.config.labels}
    return features, labels

  def _message(self, keys, lines, valid):
    """Return the error message for the first line of the batch that failed the check."""
    first = tf.argmin(tf.cast(valid, tf.int32))
    line = lines[first]
    where = self.reader.describe_rows(keys[first:first + 1])[0]

    def field_count_message():
      num_fields = tf.size(tf.strings.split(line, self.delimiter))
      return tf.strings.join([
          where, f": expected {len(self.columns)} fields separated by "
          f"`{self.delimiter}` as in the header, but the line splits into ",
          tf.strings.as_string(num_fields), " fields or has a misplaced quote: ", line])

    def value_message():
      # The line matched the CSV field syntax with the header's field count, so
      # decoding it as strings cannot fail.
      fields = tf.io.decode_csv(line[tf.newaxis], [[""]] * len(self.columns),
                                field_delim=self.delimiter)
      invalid, messages = [], []
      for column, pattern, description in self.value_checks:
        value = fields[self.columns.index(column)][0]
        invalid.append(tf.logical_not(tf.strings.regex_full_match(value, pattern)))
        messages.append(tf.where(
            tf.equal(value, ""),
            f"column `{column}` is empty, and the feature has no default",
            tf.strings.join([f"column `{column}` has value `", value,
                             f"`, but it must be {description}"])))
      first_invalid = tf.argmax(tf.cast(tf.stack(invalid), tf.int32))
      return tf.strings.join([where, ": ", tf.stack(messages)[first_invalid]])

    well_formed = tf.strings.regex_full_match(line, self.any_line_pattern)
    return tf.cond(well_formed, value_message, field_count_message)


def _delimiter_pattern(delimiter: str) -> str:
  """Return the RE2 escape of the ASCII `delimiter`, valid inside a character class too."""
  return rf"\x{ord(delimiter):02x}"


def _any_csv_field(delimiter: str) -> str:
  """Return a regular expression for one CSV field in the syntax of `decode_csv`.

  A field is unquoted without quotes or delimiters, or quoted with inner quotes doubled.
  """
  escaped = _delimiter_pattern(delimiter)
  return rf'(?:[^{escaped}"]*|"(?:[^"]|"")*")'


def _default_value(spec: features_lib.FeatureSpec) -> Any:
  """Return `spec.default` converted to the feature's dtype."""
  default = spec.default
  if spec.dtype == "string":
    if isinstance(default, str):
      return default
  elif not isinstance(default, (bool, str)):
    if spec.dtype == "float32" and isinstance(default, (int, float)):
      return float(default)
    if spec.dtype == "int64" and isinstance(default, int):
      return default
  raise FeatureConfigError(
      f"The default of feature {spec.name!r} must be a {spec.dtype} value like the "
      f"feature. Received: default={default!r}")


def _check(ok: tf.Tensor, message: Callable[[], tf.Tensor]) -> tf.Tensor:
  """Raise InvalidArgumentError with `message()` unless the scalar `ok` is true.

  The message is built only when the check fails, inside the false branch.
  """

  def fail():
    # Assert prints strings C-escaped, so the messages quote names with backticks.
    with tf.control_dependencies([tf.debugging.Assert(False, [message()])]):
      return tf.constant(False)

  return tf.cond(ok, lambda: tf.constant(True), fail)


def _after_check(ok: tf.Tensor, message: Callable[[], tf.Tensor], structure: Any) -> Any:
  """Return `structure` with the check `ok` as a dependency of every tensor."""
  with tf.control_dependencies([_check(ok, message)]):
    return tf.nest.map_structure(tf.identity, structure)


def _error_text(error: tf.errors.OpError) -> str:
  """Return the message of a failed check without TensorFlow's op and node names."""
  text = error.message.split("\n\t [[", 1)[0].split(" [Op:", 1)[0]
  marker = "assertion failed: ["
  start = text.find(marker)
  if start >= 0:
    # Assert prints string data C-escaped: quotes get a backslash, non-ASCII bytes
    # become octal escapes.
    text = text[start + len(marker):].rsplit("]", 1)[0]
    unescaped = text.encode("ascii", "backslashreplace").decode("unicode_escape")
    return unescaped.encode("latin-1", "replace").decode("utf-8", "replace")
  marker = " transformation with iterator: "
  if marker in text:
    # Drop "Error in user-defined function ... Iterator::Root::...: ".
    return text.split(marker, 1)[1].split(": ", 1)[-1]
  return re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
