#!/bin/sh
# No-op coverage tool of the offline Bazel setup.
exit 0
