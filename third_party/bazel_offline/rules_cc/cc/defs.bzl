"""The C++ rules of rules_cc, re-exported from Bazel's built-in (native) rules.

Offline stand-in: the BUILD files of Bazel 4.2.3's embedded tools load these seven
names from `@rules_cc//cc:defs.bzl`. This project builds no C++ of its own.
"""

def cc_binary(**attrs):
    native.cc_binary(**attrs)

def cc_library(**attrs):
    native.cc_library(**attrs)

def cc_proto_library(**attrs):
    native.cc_proto_library(**attrs)

def cc_test(**attrs):
    native.cc_test(**attrs)

def cc_toolchain(**attrs):
    native.cc_toolchain(**attrs)

def cc_toolchain_suite(**attrs):
    native.cc_toolchain_suite(**attrs)

def objc_library(**attrs):
    native.objc_library(**attrs)
