"""Print a TF Serving predict request for rows of a training run's data split.

  python -m trainers.request --model_dir=runs/movielens --split=valid --row=0 --format=rest

Formats:
  rest           JSON body for POST /v1/models/<name>:predict, "instances" (row) format
  rest_columnar  the same with "inputs" (columnar) format
  tf_example     JSON body for the serving_tf_example signature, base64 tf.Examples
  grpc           a PredictRequest for PredictionService.Predict, in protobuf text format

The rows are read from the split's files in the fixed evaluation order of
`pepnet_tf.input.make_dataset`, counted from 0.
"""

from absl import app
from absl import flags
from absl import logging

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import serving

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The model_dir of a training run.")
flags.DEFINE_enum("split", "valid", list(serving.SPLITS), "Data split to read the rows from.")
flags.DEFINE_integer("row", 0, "Index of the first row in the split, from 0.", lower_bound=0)
flags.DEFINE_integer("num_rows", 1, "Number of consecutive rows in the request.",
                     lower_bound=1)
flags.DEFINE_enum("format", "rest", list(serving.REQUEST_FORMATS),
                  "Request format, see the module help.")
flags.DEFINE_string("model_name", serving.DEFAULT_MODEL_NAME,
                    "Model name in a grpc request, as the server's model config names "
                    "the model.")
flags.mark_flag_as_required("model_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    text = serving.format_split_request(FLAGS.model_dir, FLAGS.split, FLAGS.row,
                                        FLAGS.num_rows, FLAGS.format, FLAGS.model_name)
  except ValueError as error:
    logging.error("Building the request failed: %s", error)
    return 1
  print(text)
  return 0


if __name__ == "__main__":
  app.run(main)
