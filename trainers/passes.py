r"""Train the passes of a pass layout in order, each warm-started from the one before.

  python -m data.movielens passes --out=/tmp/ml_passes
  python -m trainers.passes --passes_dir=/tmp/ml_passes --model_dir=runs/ml_passes \
      --admission_window=4

Every training flag of `trainers.train` applies to each pass, except the data flags
(--dataset, --feature_config, --train, --valid, --test) and --warm_start_from, which
come from the layout. Pass k trains in MODEL_DIR/<pass name>; the summaries go to
MODEL_DIR/passes_report.json and MODEL_DIR/passes_report.md. A rerun skips the
passes that finished.
"""

from absl import app
from absl import flags

from pepnet_tf import passes
from trainers import train as train_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("passes_dir", None, "Pass layout: passes.json, feature_config.json and "
                    "one directory of TFRecords per pass.")
flags.DEFINE_bool("warm_start", True, "Seed every pass from the previous one; "
                  "--nowarm_start trains each pass from scratch, as a baseline.")
flags.DEFINE_integer("first_pass", 1, "First pass to train, counted from 1.")
flags.DEFINE_integer("last_pass", None, "Last pass to train; defaults to the last one.")
flags.mark_flag_as_required("passes_dir")

_LAYOUT_FLAGS = ("dataset", "feature_config", "train", "valid", "test", "warm_start_from")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  layout_flags_set = [name for name in _LAYOUT_FLAGS if FLAGS[name].present]
  if layout_flags_set:
    raise app.UsageError(
        f"Remove --{', --'.join(layout_flags_set)}: each pass takes its data and feature "
        "config from --passes_dir and warm-starts from the previous pass's directory. "
        "Rebuild the layout to change its feature config.")
  template = train_flags.config_from_flags()
  passes.run_passes(template, FLAGS.passes_dir, FLAGS.model_dir,
                    warm_start=FLAGS.warm_start, first=FLAGS.first_pass,
                    last=FLAGS.last_pass)
  print(open(f"{FLAGS.model_dir}/{passes.REPORT_MARKDOWN}", encoding="utf-8").read())


if __name__ == "__main__":
  app.run(main)
