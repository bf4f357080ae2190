"""Exact AUC, GAUC and log loss against brute-force and hand-computed references."""

import itertools
import math

from absl.testing import parameterized
import numpy as np

from pepnet_tf import metrics


def _pairwise_auc(labels, scores):
  """AUC by comparing every positive with every negative; ties count one half."""
  positives = [s for l, s in zip(labels, scores) if l == 1]
  negatives = [s for l, s in zip(labels, scores) if l == 0]
  wins = 0.0
  for positive, negative in itertools.product(positives, negatives):
    if positive > negative:
      wins += 1.0
    elif positive == negative:
      wins += 0.5
  return wins / (len(positives) * len(negatives))


class AucTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ("continuous_scores", 0, 50, False),
      ("tied_scores", 1, 80, True),
      ("small", 2, 6, True))
  def test_auc_matches_pairwise(self, seed, size, rounded):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size)
    labels[:2] = [0, 1]
    scores = rng.random(size)
    if rounded:
      scores = np.round(scores, 1)
    self.assertAlmostEqual(metrics.auc(labels, scores), _pairwise_auc(labels, scores), 12)

  def test_auc_by_hand(self):
    # Positives 0.8 and 0.4, negatives 0.4 and 0.1: 1 + 1 + 0.5 + 1 = 3.5 of 4 pairs.
    self.assertAlmostEqual(metrics.auc([1, 1, 0, 0], [0.8, 0.4, 0.4, 0.1]), 0.875)

  def test_auc_single_class_is_nan(self):
    self.assertTrue(math.isnan(metrics.auc([1, 1], [0.2, 0.3])))

  def test_auc_length_mismatch_raises(self):
    with self.assertRaisesRegex(ValueError, "same length"):
      metrics.auc([1, 0, 1], [0.2, 0.3])


class GaucTest(parameterized.TestCase):

  def test_gauc_by_hand(self):
    # User 7: 3 rows, AUC 1.0. User 8: 2 rows, AUC 0.0. User 9: one class, skipped.
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.2, 0.3, 0.6, 0.5, 0.4]
    users = [7, 7, 7, 8, 8, 9, 9]
    self.assertAlmostEqual(metrics.gauc(labels, scores, users), (3 * 1.0 + 2 * 0.0) / 5)

  def test_gauc_without_mixed_groups_is_nan(self):
    self.assertTrue(math.isnan(metrics.gauc([1, 0], [0.5, 0.5], [1, 2])))


class RankingMetricsTest(parameterized.TestCase):

  def test_missing_labels_left_out(self):
    labels = {"like": np.array([1, 0, -1, 1, 0, -1])}
    scores = {"like": np.array([0.9, 0.2, 0.99, 0.7, 0.4, 0.01])}
    domain = np.array([0, 0, 0, 1, 1, 1])
    users = np.array([1, 1, 1, 2, 2, 2])
    result = metrics.ranking_metrics(["like"], labels, scores, domain, 2, users)
    self.assertAlmostEqual(result["auc/like"], 1.0)
    self.assertAlmostEqual(result["auc/like/domain_0"], 1.0)
    self.assertAlmostEqual(result["gauc/like"], 1.0)
    expected_logloss = -np.mean(np.log([0.9, 0.8, 0.7, 0.6]))
    self.assertAlmostEqual(result["logloss/like"], expected_logloss, 6)

  def test_keys_per_task_and_domain(self):
    labels = {"a": np.array([1, 0]), "b": np.array([0, 1])}
    result = metrics.ranking_metrics(
        ["a", "b"], labels, {"a": np.array([0.5, 0.2]), "b": np.array([0.1, 0.3])},
        np.array([0, 1]), 2)
    self.assertEqual(
        sorted(result),
        ["auc/a", "auc/a/domain_0", "auc/a/domain_1", "auc/b", "auc/b/domain_0",
         "auc/b/domain_1", "logloss/a", "logloss/b"])
