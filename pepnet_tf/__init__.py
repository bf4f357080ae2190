"""PEPNet for multi-domain, multi-task ranking in TensorFlow with Keras 2.

Importing this package selects Keras 2 (tf_keras), which TensorFlow Recommenders
needs; see `pepnet_tf._keras_setup`.
"""

from pepnet_tf import _keras_setup

_keras_setup.use_legacy_keras()

# pylint: disable=g-import-not-at-top,wrong-import-position
from pepnet_tf import layers

__version__ = "0.1.0"
