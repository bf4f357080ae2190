"""Exact ranking metrics computed after evaluation: AUC, GAUC and log loss.

Keras' streaming AUC approximates with thresholds; the numbers written to the
metrics file come from these exact versions over all predictions of a split.
"""

from typing import Dict, Optional, Sequence

import numpy as np

_EPSILON = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Exact ROC AUC: the probability that a positive outranks a negative, ties 1/2.

  Returns NaN when `labels` holds only one class.
  """
  labels = np.asarray(labels, dtype=np.float64).ravel()
  scores = np.asarray(scores, dtype=np.float64).ravel()
  if labels.shape != scores.shape:
    raise ValueError(
        f"`labels` and `scores` must have the same length. Received: {labels.shape} "
        f"and {scores.shape}")
  num_positive = float(np.sum(labels == 1))
  num_negative = float(np.sum(labels == 0))
  if num_positive == 0 or num_negative == 0:
    return float("nan")
  ranks = _average_ranks(scores)
  positive_rank_sum = float(np.sum(ranks[labels == 1]))
  return (positive_rank_sum - num_positive * (num_positive + 1) / 2) / (
      num_positive * num_negative)


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of `values`, ties sharing their average rank."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start index of every run of equal values in the sorted order.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], len(values)]
  average = (starts + ends + 1) / 2.0  # mean of the 1-based ranks start+1 .. end
  ranks = np.empty(len(values), dtype=np.float64)
  ranks[order] = np.repeat(average, ends - starts)
  return ranks


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
  """Group AUC: per-group AUC weighted by the group's number of impressions.

  Groups (users) whose labels hold a single class are skipped. Returns NaN when no
  group has both classes.
  """
  labels = np.asarray(labels).ravel()
  scores = np.asarray(scores).ravel()
  groups = np.asarray(groups).ravel()
  order = np.argsort(groups, kind="mergesort")
  sorted_groups = groups[order]
  boundaries = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1], True])
  weighted_sum = 0.0
  total_weight = 0
  for start, end in zip(boundaries[:-1], boundaries[1:]):
    members = order[start:end]
    group_auc = auc(labels[members], scores[members])
    if np.isnan(group_auc):
      continue
    weighted_sum += group_auc * len(members)
    total_weight += len(members)
  return weighted_sum / total_weight if total_weight else float("nan")


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
  """Mean binary cross-entropy, with scores clipped to [1e-7, 1 - 1e-7]."""
  labels = np.asarray(labels, dtype=np.float64).ravel()
  scores = np.clip(np.asarray(scores, dtype=np.float64).ravel(), _EPSILON, 1 - _EPSILON)
  if labels.size == 0:
    return float("nan")
  return float(-np.mean(labels * np.log(scores) + (1 - labels) * np.log(1 - scores)))


def ranking_metrics(task_names: Sequence[str],
                    labels: Dict[str, np.ndarray],
                    scores: Dict[str, np.ndarray],
                    domain_index: np.ndarray,
                    num_domains: int,
                    user_ids: Optional[np.ndarray] = None) -> Dict[str, float]:
  """Compute all metrics of a split, keyed as in the metrics file.

  Keys: `auc/<task>`, `auc/<task>/domain_<k>`, `logloss/<task>`, and `gauc/<task>`
  when `user_ids` is given. Samples whose label is missing (negative) are left out
  of that task's metrics.
  """
  results = {}
  domain_index = np.asarray(domain_index).ravel()
  for name in task_names:
    label = np.asarray(labels[name]).ravel()
    score = np.asarray(scores[name]).ravel()
    present = label >= 0
    results[f"auc/{name}"] = auc(label[present], score[present])
    results[f"logloss/{name}"] = log_loss(label[present], score[present])
    for domain in range(num_domains):
      in_domain = present & (domain_index == domain)
      results[f"auc/{name}/domain_{domain}"] = auc(label[in_domain], score[in_domain])
    if user_ids is not None:
      users = np.asarray(user_ids).ravel()
      results[f"gauc/{name}"] = gauc(label[present], score[present], users[present])
  return results
