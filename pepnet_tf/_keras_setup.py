"""Select Keras 2 (tf_keras) for TensorFlow before anything imports it.

TensorFlow Recommenders builds on Keras 2, while TensorFlow 2.16 and later resolve
`tf.keras` to Keras 3 unless `TF_USE_LEGACY_KERAS=1` is set when `tf.keras` is first
accessed. This module sets the variable and checks that it took effect.
"""

import os
import sys

_FALSE_VALUES = ("0", "false", "no", "off")


def use_legacy_keras() -> None:
  """Make `tf.keras` resolve to tf_keras, or raise ImportError explaining the fix."""
  current = os.environ.get("TF_USE_LEGACY_KERAS")
  if current is not None and current.strip().lower() in _FALSE_VALUES:
    raise ImportError(
        "pepnet_tf needs Keras 2 (tf_keras), but TF_USE_LEGACY_KERAS is set to "
        f"{current!r}. Unset it or set TF_USE_LEGACY_KERAS=1 before starting Python.")
  os.environ["TF_USE_LEGACY_KERAS"] = "1"

  if "tensorflow" not in sys.modules:
    return

  # TensorFlow is already imported. `tf.keras` is resolved lazily, so the variable
  # still works unless something accessed `tf.keras` before it was set.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  dense_module = tf.keras.layers.Dense.__module__
  if not dense_module.startswith("tf_keras"):
    raise ImportError(
        "TensorFlow was imported with Keras 3 before pepnet_tf (tf.keras.layers.Dense "
        f"comes from {dense_module!r}), but pepnet_tf and TensorFlow Recommenders need "
        "Keras 2. Import pepnet_tf before anything that uses tf.keras, or set "
        "TF_USE_LEGACY_KERAS=1 in the environment before starting Python.")
