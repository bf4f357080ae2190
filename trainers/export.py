"""Export the best checkpoint of a training run as a versioned SavedModel.

  python -m trainers.export --model_dir=/tmp/pepnet --export_base=/tmp/serving/pepnet

writes `<export_base>/<unix time>/` atomically and keeps the newest --keep versions.
"""

from absl import app
from absl import flags

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import export as export_lib
from pepnet_tf import training

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The model_dir of a training run.")
flags.DEFINE_string("export_base", None,
                    "Directory of versions; defaults to <model_dir>/export.")
flags.DEFINE_string("checkpoint", "best",
                    "'best', 'latest' or a checkpoint path inside model_dir.")
flags.DEFINE_integer("keep", 5, "Number of newest versions kept under export_base.")
flags.mark_flag_as_required("model_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  model, feature_config, _ = training.load_trained_model(FLAGS.model_dir, FLAGS.checkpoint)
  export_base = FLAGS.export_base or f"{FLAGS.model_dir}/export"
  print(export_lib.export_versioned(model, feature_config, export_base, keep=FLAGS.keep))


if __name__ == "__main__":
  app.run(main)
