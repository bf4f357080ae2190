"""Export a checkpoint of a training run as a versioned SavedModel for TF Serving.

  python -m trainers.export --model_dir=runs/movielens --export_base=runs/serving/pepnet --keep=2

writes `<export_base>/<version>/` (version = Unix time in seconds) through a hidden
temporary directory and a rename, checks it against the restored model, and keeps
the newest --keep versions. The warmup requests come from the first --warmup_rows
rows of the run's validation split. Prints the path of the new version.
"""

import os

from absl import app
from absl import flags
from absl import logging

import pepnet_tf  # noqa: F401  # selects Keras 2 before TensorFlow loads
from pepnet_tf import export as export_lib
from pepnet_tf import serving
from pepnet_tf import training

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The model_dir of a training run.")
flags.DEFINE_string("export_base", None,
                    "Directory of versions, TF Serving's base_path; defaults to "
                    "<model_dir>/export.")
flags.DEFINE_string("checkpoint", "best",
                    "'best', 'latest' or a checkpoint path inside model_dir.")
flags.DEFINE_integer("keep", 5, "Number of newest versions kept under export_base.",
                     lower_bound=1)
flags.DEFINE_integer("warmup_rows", export_lib.DEFAULT_WARMUP_ROWS,
                     "Rows of the validation split in the warmup requests; 0 writes no "
                     "warmup file.", lower_bound=0)
flags.DEFINE_string("model_name", serving.DEFAULT_MODEL_NAME,
                    "Model name in the warmup requests, as the server's model config "
                    "names the model.")
flags.mark_flag_as_required("model_dir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    model, feature_config, paths = training.load_trained_model(FLAGS.model_dir,
                                                               FLAGS.checkpoint)
  except FileNotFoundError as error:
    logging.error("Loading the training run failed: %s", error)
    return 1

  warmup_rows = None
  if FLAGS.warmup_rows:
    try:
      warmup_rows = export_lib.read_warmup_rows(feature_config, paths.valid,
                                                count=FLAGS.warmup_rows)
    except (ValueError, OSError) as error:
      logging.error("Reading %d warmup rows from the validation files %s failed: %s. "
                    "Pass --warmup_rows=0 to export without a warmup file.",
                    FLAGS.warmup_rows, paths.valid, error)
      return 1

  export_base = FLAGS.export_base or os.path.join(FLAGS.model_dir, "export")
  try:
    path = export_lib.export_versioned(model, feature_config, export_base, keep=FLAGS.keep,
                                       warmup_rows=warmup_rows, model_name=FLAGS.model_name)
  except (export_lib.ExportVerificationError, FileExistsError) as error:
    logging.error("Exporting to %s failed: %s", export_base, error)
    return 1
  print(path)
  return 0


if __name__ == "__main__":
  app.run(main)
