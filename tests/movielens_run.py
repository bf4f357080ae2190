"""A small PEPNet trained on real MovieLens-100K rows, shared by the export tests."""

import os
import tempfile

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

from data import movielens
from pepnet_tf import training


def train_small_model(prefix: str, train_rows: int) -> dict:
  """Prepare MovieLens-100K in a new temp dir and train one epoch on `train_rows` rows.

  Returns a dict with `temp_dir` (the caller removes it), `model_dir`, `valid_files`
  and `export_path`.
  """
  temp_dir = tempfile.mkdtemp(prefix=prefix)
  data_dir = movielens.prepare(
      os.path.join(temp_dir, "data"),
      cache_dir=os.path.join(movielens.default_data_dir(), "downloads"))
  small_train = os.path.join(temp_dir, "train_small.tfrecord")
  with tf.io.TFRecordWriter(small_train) as writer:
    for record in tf.data.TFRecordDataset(
        os.path.join(data_dir, "train.tfrecord")).take(train_rows):
      writer.write(record.numpy())

  model_dir = os.path.join(temp_dir, "run")
  valid_files = [os.path.join(data_dir, "valid.tfrecord")]
  result = training.train(training.TrainConfig(
      model_dir=model_dir,
      feature_config=os.path.join(data_dir, "feature_config.json"),
      train_files=[small_train], valid_files=valid_files,
      epochs=1, batch_size=256, hidden_units=[16], verbose=0))
  return {"temp_dir": temp_dir, "model_dir": model_dir, "valid_files": valid_files,
          "export_path": result["export_path"]}
