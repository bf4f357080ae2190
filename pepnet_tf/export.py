"""SavedModel export with serving signatures for TF Serving.

Two signatures, both with method `tensorflow/serving/predict`:
- `serving_default`: one `(batch_size,)` input per feature of the config (its raw
  dtype: int64, float32 or string), returning one `(batch_size,)` float32
  probability per task, keyed by task name.
- `serving_tf_example`: input `examples`, a `(batch_size,)` string tensor of
  serialized `tf.Example`, returning the same outputs.
"""

import os
import shutil
import time
from typing import Dict, Optional

import tensorflow as tf

from pepnet_tf import features as features_lib

_TF_DTYPES = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}


def input_signature(config: features_lib.FeatureConfig) -> Dict[str, tf.TensorSpec]:
  """TensorSpecs of the raw inputs of `serving_default`, keyed by feature name."""
  return {spec.name: tf.TensorSpec([None], _TF_DTYPES[spec.dtype], name=spec.name)
          for spec in config.input_features}


def example_parse_spec(config: features_lib.FeatureConfig) -> Dict[str, tf.io.FixedLenFeature]:
  """`tf.io.parse_example` spec of the input features; `default` fills a missing one."""
  spec = {}
  for feature in config.input_features:
    default = feature.default
    if default is not None and feature.dtype == "string":
      default = str(default)
    spec[feature.name] = tf.io.FixedLenFeature(
        [], _TF_DTYPES[feature.dtype], default_value=default)
  return spec


class ServingModule(tf.Module):
  """Wraps a trained PEPNet with the two serving functions."""

  def __init__(self, model: tf.keras.Model, config: features_lib.FeatureConfig):
    super().__init__(name="pepnet_serving")
    self.model = model
    self._parse_spec = example_parse_spec(config)
    self.serve = tf.function(self._serve, input_signature=[input_signature(config)])
    self.serve_examples = tf.function(
        self._serve_examples,
        input_signature=[tf.TensorSpec([None], tf.string, name="examples")])

  def _serve(self, features):
    outputs = self.model(features, training=False)
    return {name: tf.identity(value, name=name) for name, value in outputs.items()}

  def _serve_examples(self, examples):
    # (batch_size,) serialized tf.Example -> feature name -> (batch_size,)
    return self._serve(tf.io.parse_example(examples, self._parse_spec))

  def signatures(self):
    return {
        "serving_default": self.serve.get_concrete_function(),
        "serving_tf_example": self.serve_examples.get_concrete_function(),
    }


def save(model: tf.keras.Model, config: features_lib.FeatureConfig, path: str) -> str:
  """Write the SavedModel of `model` with both serving signatures to `path`."""
  module = ServingModule(model, config)
  tf.saved_model.save(module, path, signatures=module.signatures())
  return path


def export_versioned(model: tf.keras.Model,
                     config: features_lib.FeatureConfig,
                     export_base: str,
                     keep: Optional[int] = 5,
                     version: Optional[int] = None) -> str:
  """Export to `export_base/<version>/` atomically and keep the newest `keep` versions.

  The version is the integer Unix time unless given, and is bumped past the newest
  existing one. The model is written to a hidden temporary sibling and renamed, so a
  server polling `export_base` never sees a half-written version.
  """
  if keep is not None and keep < 1:
    raise ValueError(f"`keep` must be >= 1 or None. Received: keep={keep!r}")
  tf.io.gfile.makedirs(export_base)
  existing = _versions(export_base)
  if version is None:
    version = int(time.time())
  if existing and version <= existing[-1]:
    version = existing[-1] + 1
  final_path = os.path.join(export_base, str(version))
  temp_path = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
  if tf.io.gfile.exists(temp_path):
    tf.io.gfile.rmtree(temp_path)
  try:
    save(model, config, temp_path)
    tf.io.gfile.rename(temp_path, final_path)
  finally:
    if tf.io.gfile.exists(temp_path):
      tf.io.gfile.rmtree(temp_path)
  if keep is not None:
    for old in _versions(export_base)[:-keep]:
      shutil.rmtree(os.path.join(export_base, str(old)), ignore_errors=True)
  return final_path


def _versions(export_base: str):
  names = tf.io.gfile.listdir(export_base) if tf.io.gfile.exists(export_base) else []
  return sorted(int(name.rstrip("/")) for name in names if name.rstrip("/").isdigit())


def latest_export(export_base: str) -> Optional[str]:
  """Path of the newest version under `export_base`, or None."""
  versions = _versions(export_base)
  return os.path.join(export_base, str(versions[-1])) if versions else None
