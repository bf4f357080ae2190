"""Fresh initializer instances for every weight.

A tf_keras initializer instance returns the same values each time it is called with
the same shape, so sharing one instance between weights (every task's kernel, a
gate's two layers) would start them identical. Each weight gets its own clone.
"""

import itertools

import tensorflow as tf

_SEED_OFFSETS = itertools.count(1)


def clone_initializer(initializer):
  """Return a new instance of `initializer`, with a different seed if it is seeded."""
  initializer = tf.keras.initializers.get(initializer)
  if not isinstance(initializer, tf.keras.initializers.Initializer):
    return initializer  # a plain function has no state to share
  config = initializer.get_config()
  if config.get("seed") is not None:
    config["seed"] = config["seed"] + next(_SEED_OFFSETS)
  return type(initializer).from_config(config)
