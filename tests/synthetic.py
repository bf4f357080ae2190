"""A tiny synthetic multi-domain, multi-task dataset written as CSV or TFRecord.

Labels depend on the user, the item and the domain, so a model can learn them in a
few epochs. Used by tests that need a whole training run.
"""

import json
import os

import numpy as np

import pepnet_tf  # noqa: F401  # selects Keras 2
import tensorflow as tf

DOMAINS = ["home", "search", "feed"]
COLUMNS = ["user_id", "item_id", "age", "city", "item_rate", "page", "click", "like"]


def _rows(num_rows: int, seed: int):
  rng = np.random.default_rng(seed)
  user = rng.integers(0, 40, num_rows)
  item = rng.integers(0, 60, num_rows)
  page = rng.integers(0, len(DOMAINS), num_rows)
  age = rng.uniform(15, 70, num_rows).round(1)
  city = rng.choice(["north", "south", "east"], num_rows)
  item_rate = rng.random(num_rows).round(3)
  score = np.sin(user) + np.cos(item) + 0.5 * (page - 1) + (age > 40)
  click = (score + rng.normal(0, 0.5, num_rows) > 0.5).astype(int)
  like = (score + rng.normal(0, 0.5, num_rows) > 1.2).astype(int)
  # Every tenth like label is missing.
  like_text = [str(value) if index % 10 else "" for index, value in enumerate(like)]
  return [
      dict(user_id=int(user[i]), item_id=int(item[i]), age=float(age[i]), city=str(city[i]),
           item_rate=float(item_rate[i]), page=DOMAINS[page[i]], click=int(click[i]),
           like=like_text[i])
      for i in range(num_rows)
  ]


def feature_config(file_format: str) -> dict:
  return {
      "name": "synthetic",
      "format": file_format,
      "embedding_dim": 4,
      "domain": {"feature": "page", "values": DOMAINS},
      "user_id_feature": "user_id",
      "features": [
          {"name": "user_id", "group": "prior", "vocabulary": list(range(40))},
          {"name": "item_id", "group": "prior", "hash_buckets": 64},
          {"name": "age", "group": "general", "dtype": "float32",
           "boundaries": [20.0, 30.0, 40.0, 50.0, 60.0]},
          {"name": "city", "group": "general", "dtype": "string",
           "vocabulary": ["north", "south"]},
          {"name": "item_rate", "group": "domain_side", "dtype": "float32",
           "boundaries": [0.25, 0.5, 0.75]},
          {"name": "page", "group": "domain", "dtype": "string"},
          {"name": "click", "group": "label"},
          {"name": "like", "group": "label"},
      ],
  }


def write_dataset(directory: str, file_format: str = "csv", sizes=(600, 200, 200),
                  seed: int = 0) -> dict:
  """Write train/valid/test files and a feature config; return their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for offset, (split, size) in enumerate(zip(("train", "valid", "test"), sizes)):
    rows = _rows(size, seed + offset)
    if file_format == "csv":
      path = os.path.join(directory, f"{split}.csv")
      with open(path, "w", encoding="utf-8") as handle:
        handle.write(",".join(COLUMNS) + "\n")
        for row in rows:
          handle.write(",".join(str(row[column]) for column in COLUMNS) + "\n")
    else:
      path = os.path.join(directory, f"{split}.tfrecord")
      with tf.io.TFRecordWriter(path) as writer:
        for row in rows:
          writer.write(_example(row).SerializeToString())
    paths[split] = path
  config_path = os.path.join(directory, "feature_config.json")
  with open(config_path, "w", encoding="utf-8") as handle:
    json.dump(feature_config(file_format), handle)
  paths["feature_config"] = config_path
  return paths


def _example(row: dict) -> tf.train.Example:
  feature = {
      "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["user_id"]])),
      "item_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["item_id"]])),
      "age": tf.train.Feature(float_list=tf.train.FloatList(value=[row["age"]])),
      "city": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["city"].encode()])),
      "item_rate": tf.train.Feature(float_list=tf.train.FloatList(value=[row["item_rate"]])),
      "page": tf.train.Feature(bytes_list=tf.train.BytesList(value=[row["page"].encode()])),
      "click": tf.train.Feature(int64_list=tf.train.Int64List(value=[row["click"]])),
  }
  if row["like"] != "":
    feature["like"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(row["like"])]))
  return tf.train.Example(features=tf.train.Features(feature=feature))
