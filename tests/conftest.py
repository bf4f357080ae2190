"""Pytest configuration shared by the test suite."""

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import tensorflow as tf


def pytest_collection_modifyitems(config, items):
  """Drop `tf.test.TestCase.test_session`, a helper that pytest collects as a test.

  pytest would report it as skipped ("Not a test.") once per test class.
  """
  del config  # unused
  items[:] = [
      item for item in items
      if getattr(getattr(item, "obj", None), "__func__", None)
      is not tf.test.TestCase.test_session
  ]
