"""The Python rules of rules_python, re-exported from Bazel's built-in (native) rules.

Offline stand-in for Bazel versions that still ship the Python rules natively
(Bazel 4.2.3 from Debian's bazel-bootstrap package). Only the names that this
project's BUILD files load are defined.
"""

def py_library(**attrs):
    native.py_library(**attrs)

def py_binary(**attrs):
    native.py_binary(**attrs)

def py_test(**attrs):
    native.py_test(**attrs)
