"""Tests of the Keras 2 switch that `import pepnet_tf` performs.

Each case runs in a fresh Python process, because the switch only works before
TensorFlow resolves `tf.keras` and the test process has resolved it already.
"""

import os
import subprocess
import sys
import textwrap

import pepnet_tf  # selects Keras 2 before TensorFlow resolves tf.keras

import tensorflow as tf
from absl.testing import parameterized

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Exit status of a child script that caught the expected ImportError.
_IMPORT_ERROR_STATUS = 3

_PRINT_IMPORT_ERROR = f"""
import sys
try:
  import pepnet_tf
except ImportError as error:
  print(error)
  sys.exit({_IMPORT_ERROR_STATUS})
"""

_PRINT_DENSE_MODULE = """
import tensorflow as tf
print(tf.keras.layers.Dense.__module__)
"""


def run_python(code, legacy_keras=None):
  """Run `code` in a new interpreter from the repository root and return the result.

  `legacy_keras` is the value of TF_USE_LEGACY_KERAS in the child, or None to unset it.
  """
  env = dict(os.environ)
  env.pop("TF_USE_LEGACY_KERAS", None)
  if legacy_keras is not None:
    env["TF_USE_LEGACY_KERAS"] = legacy_keras
  env["TF_CPP_MIN_LOG_LEVEL"] = "3"
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
  return subprocess.run(
      [sys.executable, "-c", textwrap.dedent(code)],
      cwd=_REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


class KerasSetupTest(tf.test.TestCase, parameterized.TestCase):

  def assertExitStatus(self, expected, result):
    self.assertEqual(
        expected, result.returncode,
        msg=f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")

  def test_import_selects_tf_keras(self):
    result = run_python("import pepnet_tf\n" + _PRINT_DENSE_MODULE)

    self.assertExitStatus(0, result)
    self.assertStartsWith(result.stdout.strip(), "tf_keras")

  def test_tensorflow_first_without_keras(self):
    # `tf.keras` resolves lazily, so importing TensorFlow alone is harmless.
    result = run_python("import tensorflow as tf\nimport pepnet_tf\n" + _PRINT_DENSE_MODULE)

    self.assertExitStatus(0, result)
    self.assertStartsWith(result.stdout.strip(), "tf_keras")

  def test_keras_3_already_resolved(self):
    code = "import tensorflow as tf\ntf.keras.layers.Dense\n" + _PRINT_IMPORT_ERROR

    result = run_python(code)

    self.assertExitStatus(_IMPORT_ERROR_STATUS, result)
    self.assertIn("Import pepnet_tf before anything that uses tf.keras", result.stdout)
    self.assertIn("set TF_USE_LEGACY_KERAS=1", result.stdout)

  @parameterized.named_parameters(
      ("zero", "0"),
      ("false", "false"),
      ("off_upper_case", "OFF"),
  )
  def test_legacy_keras_disabled(self, value):
    result = run_python(_PRINT_IMPORT_ERROR, legacy_keras=value)

    self.assertExitStatus(_IMPORT_ERROR_STATUS, result)
    self.assertIn(f"TF_USE_LEGACY_KERAS is set to {value!r}", result.stdout)
    self.assertIn("Unset it or set TF_USE_LEGACY_KERAS=1", result.stdout)

  def test_legacy_keras_enabled(self):
    result = run_python("import pepnet_tf\n" + _PRINT_DENSE_MODULE, legacy_keras="1")

    self.assertExitStatus(0, result)
    self.assertStartsWith(result.stdout.strip(), "tf_keras")


if __name__ == "__main__":
  tf.test.main()
