"""Shape checks and reshapes shared by the PEPNet layers."""

import tensorflow as tf


def flatten_embeddings(tensor: tf.Tensor, argument: str) -> tf.Tensor:
  """Reshape `(batch_size, num_fields, embedding_dim)` or `(batch_size, width)` to 2-D.

  Raises ValueError naming `argument` for any other rank or an unknown width.
  """
  # Keras converts only a layer's first call argument, so later ones may be numpy.
  tensor = tf.convert_to_tensor(tensor)
  shape = tensor.shape
  if shape.rank == 2:
    if shape[-1] is None:
      raise ValueError(f"`{argument}` needs a known last dimension. Received: shape={shape}")
    return tensor
  if shape.rank == 3:
    if shape[1] is None or shape[2] is None:
      raise ValueError(
          f"`{argument}` needs known `num_fields` and `embedding_dim`. Received: shape={shape}")
    # (batch_size, num_fields, embedding_dim) -> (batch_size, num_fields * embedding_dim)
    return tf.reshape(tensor, [-1, shape[1] * shape[2]])
  raise ValueError(
      f"`{argument}` must be 2-D `(batch_size, width)` or 3-D "
      f"`(batch_size, num_fields, embedding_dim)`. Received: shape={shape}")


def flat_width(shape: tf.TensorShape) -> int:
  """Width of a tensor of `shape` once flattened by `flatten_embeddings`."""
  shape = tf.TensorShape(shape)
  if shape.rank == 2:
    return shape[1]
  return shape[1] * shape[2]
