"""Timing helpers shared by the benchmark scripts."""

import time

import tensorflow as tf


class EpochTimer(tf.keras.callbacks.Callback):
  """Wall-clock seconds of every epoch of `model.fit`, in `durations`."""

  def __init__(self):
    super().__init__()
    self.durations = []

  def on_epoch_begin(self, epoch, logs=None):
    self._start = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    self.durations.append(time.perf_counter() - self._start)
