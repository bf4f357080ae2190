"""Declarative feature configuration: which column is what, and how it is embedded.

A dataset is described by one JSON file, loaded into `FeatureConfig`. Every feature
belongs to exactly one group:

- "general": user and item attributes, context, bucketized counts. Their embeddings
  form `E`, the input of the towers.
- "domain_side": statistics of the user or item inside the sample's domain. Their
  embeddings (and the domain id's) form `E_d`, read only by EPNet's gate.
- "prior": the most personalized ids (user id, item id, author id). Their embeddings
  form `O_prior`, read by PPNet's gates. Generic features do not belong here: the
  gates help because they see who the user and the item are.
- "domain": the single feature that names the domain a sample comes from.
- "label": one binary label per task; 1 positive, 0 negative, missing masks the task.

Example:

    {
      "name": "toy",
      "format": "csv",
      "embedding_dim": 8,
      "domain": {"feature": "page", "values": ["home", "search"]},
      "user_id_feature": "user_id",
      "features": [
        {"name": "user_id", "group": "prior", "dtype": "int64", "hash_buckets": 1000},
        {"name": "age", "group": "general", "dtype": "float32", "boundaries": [18, 30, 50]},
        {"name": "page", "group": "domain", "dtype": "string"},
        {"name": "click", "group": "label", "weight": 1.0}
      ]
    }
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence

GROUPS = ("general", "domain_side", "prior", "domain", "label")
DTYPES = ("int64", "float32", "string")
FORMATS = ("tfrecord", "csv")
UNKNOWN_DOMAIN_POLICIES = ("error", "drop")

# Value that stands for a missing label in parsed data; it masks the task.
MISSING_LABEL = -1.0


class FeatureConfigError(ValueError):
  """Raised for an invalid feature configuration or data that does not match it."""


@dataclasses.dataclass
class FeatureSpec:
  """One column of the data and how the model turns it into an embedding.

  Exactly one encoding applies to a "general", "domain_side" or "prior" feature:
  a vocabulary (`vocabulary` or `vocabulary_file`), `hash_buckets`, or `boundaries`
  (numeric features, bucketized). Values outside a vocabulary share
  `num_oov_buckets` buckets, chosen by hashing.

  A vocabulary can also be admitted from training counts: with `min_frequency` or
  `max_vocabulary_size` set, the trainer counts the values of the training data (and
  of earlier passes within the admission window, see `pepnet_tf.admission`), keeps
  those seen at least `min_frequency` times, the most frequent first, at most
  `max_vocabulary_size` of them, and writes the result as the feature's vocabulary.
  Values listed in `unknown_values` (placeholders such as "" or -1 for a missing
  value) are never admitted, so they always map to an OOV bucket.
  A config that sets both these fields and a vocabulary is one that the trainer
  resolved: models built from it use the vocabulary as is, and the next training
  run counts again.

  Attributes:
    name: column name in the data.
    group: one of `GROUPS`.
    dtype: "int64", "float32" or "string", the type of the raw value.
    vocabulary: known values, in order. Index 0 .. num_oov_buckets - 1 are OOV.
    vocabulary_file: path of a text file with one value a line, relative to the
      config file unless absolute.
    num_oov_buckets: number of hashed buckets for values outside the vocabulary.
    hash_buckets: number of buckets when the value is hashed without a vocabulary.
    boundaries: sorted bucket boundaries for a numeric value.
    min_frequency: admit a value into the vocabulary when it occurs at least this
      many times in the counted training data.
    max_vocabulary_size: admit at most this many values, the most frequent first.
    unknown_values: values that stand for a missing value and are never admitted.
    embedding_dim: width of this feature's embedding; defaults to the config's.
    default: value used where the column is empty; None makes an empty value an error
      (labels default to missing).
    weight: loss weight of a "label" feature.
  """

  name: str
  group: str
  dtype: str = "int64"
  vocabulary: Optional[List[Any]] = None
  vocabulary_file: Optional[str] = None
  num_oov_buckets: int = 1
  hash_buckets: Optional[int] = None
  boundaries: Optional[List[float]] = None
  min_frequency: Optional[int] = None
  max_vocabulary_size: Optional[int] = None
  unknown_values: Optional[List[Any]] = None
  embedding_dim: Optional[int] = None
  default: Any = None
  weight: float = 1.0

  @property
  def is_embedded(self) -> bool:
    return self.group in ("general", "domain_side", "prior")

  @property
  def admits_from_counts(self) -> bool:
    """Whether the trainer builds this feature's vocabulary from training counts."""
    return self.min_frequency is not None or self.max_vocabulary_size is not None

  @property
  def needs_admission(self) -> bool:
    """Whether the vocabulary is still to be admitted: no model can be built yet."""
    return (self.admits_from_counts and self.vocabulary is None
            and self.vocabulary_file is None)

  @property
  def encoding(self) -> Optional[str]:
    """"vocabulary", "hash", "buckets", or None for domain and label columns."""
    if (self.vocabulary is not None or self.vocabulary_file is not None
        or self.admits_from_counts):
      return "vocabulary"
    if self.hash_buckets is not None:
      return "hash"
    if self.boundaries is not None:
      return "buckets"
    return None


@dataclasses.dataclass
class DomainSpec:
  """The domain column and the values it may take.

  Attributes:
    feature: name of the feature whose group is "domain".
    values: the domain values; a sample with `values[k]` goes to domain head `k`.
    on_unknown: "error" (default) fails on a value not in `values`, naming it;
      "drop" drops such rows from training and evaluation data and counts them.
    fallback: a value of `values` that serving uses for an unknown domain value;
      None makes an unknown value fail the request.
    embed: whether the domain id gets an embedding in the domain-side input.
  """

  feature: str
  values: List[Any]
  on_unknown: str = "error"
  fallback: Any = None
  embed: bool = True


@dataclasses.dataclass
class FeatureConfig:
  """A dataset's full description; see the module docstring for the JSON form."""

  features: List[FeatureSpec]
  domain: DomainSpec
  name: str = "dataset"
  format: str = "tfrecord"
  embedding_dim: int = 16
  user_id_feature: Optional[str] = None
  csv_delimiter: str = ","
  base_dir: str = ""

  def __post_init__(self):
    self.validate()

  # Feature groups, in config order.
  def group(self, group: str) -> List[FeatureSpec]:
    return [spec for spec in self.features if spec.group == group]

  @property
  def general(self) -> List[FeatureSpec]:
    return self.group("general")

  @property
  def domain_side(self) -> List[FeatureSpec]:
    return self.group("domain_side")

  @property
  def prior(self) -> List[FeatureSpec]:
    return self.group("prior")

  @property
  def labels(self) -> List[FeatureSpec]:
    return self.group("label")

  @property
  def task_names(self) -> List[str]:
    return [spec.name for spec in self.labels]

  @property
  def num_domains(self) -> int:
    return len(self.domain.values)

  @property
  def domain_feature(self) -> FeatureSpec:
    return self.feature(self.domain.feature)

  @property
  def input_features(self) -> List[FeatureSpec]:
    """Features the model reads at serving time: all but the labels."""
    return [spec for spec in self.features if spec.group != "label"]

  def feature(self, name: str) -> FeatureSpec:
    for spec in self.features:
      if spec.name == name:
        return spec
    raise FeatureConfigError(
        f"Feature {name!r} not found in the feature config. "
        f"Known features: {[spec.name for spec in self.features]}")

  def embedding_dim_of(self, spec: FeatureSpec) -> int:
    return spec.embedding_dim if spec.embedding_dim is not None else self.embedding_dim

  @property
  def needs_admission(self) -> bool:
    """Whether some vocabulary is still to be admitted from training counts."""
    return any(spec.needs_admission for spec in self.features)

  def vocabulary_of(self, spec: FeatureSpec) -> Optional[List[Any]]:
    """Return the vocabulary of `spec`, read from its file if it has one."""
    if spec.vocabulary is not None:
      return list(spec.vocabulary)
    if spec.vocabulary_file is None:
      return None
    path = spec.vocabulary_file
    if not os.path.isabs(path):
      path = os.path.join(self.base_dir, path)
    try:
      with open(path, encoding="utf-8") as handle:
        values = [line.rstrip("\n") for line in handle if line.strip()]
    except OSError as error:
      raise FeatureConfigError(
          f"Cannot read vocabulary_file {path!r} of feature {spec.name!r}: {error}") from error
    if spec.dtype == "int64":
      try:
        return [int(value) for value in values]
      except ValueError as error:
        raise FeatureConfigError(
            f"vocabulary_file {path!r} of int64 feature {spec.name!r} contains a value that "
            f"is not an integer: {error}") from error
    return values

  def validate(self) -> None:
    """Raise FeatureConfigError for the first rule the config breaks."""
    if self.format not in FORMATS:
      raise FeatureConfigError(f"`format` must be one of {FORMATS}. Received: {self.format!r}")
    if not isinstance(self.embedding_dim, int) or self.embedding_dim < 1:
      raise FeatureConfigError(
          f"`embedding_dim` must be a positive integer. Received: {self.embedding_dim!r}")
    if not self.features:
      raise FeatureConfigError("The feature config lists no features.")

    names = [spec.name for spec in self.features]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
      raise FeatureConfigError(f"Duplicate feature names in the feature config: {duplicates}")
    for spec in self.features:
      _validate_feature(spec)

    domain_features = self.group("domain")
    if not domain_features:
      raise FeatureConfigError(
          "No feature has group 'domain': every sample must name its domain, which "
          "routes it to its domain head.")
    if len(domain_features) > 1:
      raise FeatureConfigError(
          "Exactly one feature may have group 'domain'. "
          f"Received: {[spec.name for spec in domain_features]}")
    if self.domain.feature != domain_features[0].name:
      raise FeatureConfigError(
          f"domain.feature is {self.domain.feature!r}, but the feature with group "
          f"'domain' is {domain_features[0].name!r}.")
    _validate_domain(self.domain, domain_features[0])

    if not self.prior:
      raise FeatureConfigError(
          "The prior group is empty. PPNet's gates need the most personalized ids "
          "(user id, item id, author id) in group 'prior'.")
    if not self.general:
      raise FeatureConfigError("The general group is empty: the towers need an input.")
    if not self.labels:
      raise FeatureConfigError("No feature has group 'label': at least one task is needed.")
    if not self.domain_side and not self.domain.embed:
      raise FeatureConfigError(
          "EPNet's gate has no input: the domain_side group is empty and domain.embed "
          "is false.")
    if self.user_id_feature is not None and self.user_id_feature not in names:
      raise FeatureConfigError(
          f"user_id_feature {self.user_id_feature!r} is not a feature of the config.")
    if self.format == "csv" and len(self.csv_delimiter) != 1:
      raise FeatureConfigError(
          f"csv_delimiter must be one character. Received: {self.csv_delimiter!r}")

  def to_dict(self) -> Dict[str, Any]:
    result = dataclasses.asdict(self)
    result.pop("base_dir")
    result["features"] = [
        {key: value for key, value in feature.items()
         if value is not None and not (key == "num_oov_buckets" and value == 1)
         and not (key == "weight" and value == 1.0)}
        for feature in result["features"]
    ]
    return result

  def save(self, path: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
      json.dump(self.to_dict(), handle, indent=2)
      handle.write("\n")


def _validate_feature(spec: FeatureSpec) -> None:
  where = f"feature {spec.name!r}"
  if not isinstance(spec.name, str) or not spec.name:
    raise FeatureConfigError(f"Every feature needs a non-empty name. Received: {spec.name!r}")
  if spec.group not in GROUPS:
    raise FeatureConfigError(
        f"Unknown group {spec.group!r} for {where}. Known groups: {list(GROUPS)}")
  if spec.dtype not in DTYPES:
    raise FeatureConfigError(
        f"Unknown dtype {spec.dtype!r} for {where}. Known dtypes: {list(DTYPES)}")

  admission = [name for name in ("min_frequency", "max_vocabulary_size")
               if getattr(spec, name) is not None]
  encodings = [name for name, value in (("vocabulary", spec.vocabulary),
                                        ("vocabulary_file", spec.vocabulary_file),
                                        ("hash_buckets", spec.hash_buckets),
                                        ("boundaries", spec.boundaries))
               if value is not None]
  if spec.group in ("domain", "label"):
    if encodings or admission:
      raise FeatureConfigError(
          f"{where} has group {spec.group!r}, which takes no encoding. "
          f"Received: {encodings + admission}")
    if spec.group == "label" and spec.dtype == "string":
      raise FeatureConfigError(f"Label {where} must be int64 or float32 0/1, not string.")
    if spec.group == "domain" and spec.dtype == "float32":
      raise FeatureConfigError(f"Domain {where} must be int64 or string, not float32.")
    if spec.group == "label" and (not isinstance(spec.weight, (int, float)) or spec.weight < 0):
      raise FeatureConfigError(f"Label {where} needs a weight >= 0. Received: {spec.weight!r}")
    return

  if admission:
    if any(name in encodings for name in ("hash_buckets", "boundaries")):
      raise FeatureConfigError(
          f"{where} sets {admission}, which admit a vocabulary from training counts, "
          f"together with {encodings}; admission applies to vocabularies only.")
    if spec.dtype == "float32":
      raise FeatureConfigError(
          f"{where} is float32; admission from counts needs an int64 or string feature.")
    for name in admission:
      value = getattr(spec, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FeatureConfigError(f"{where} needs {name} >= 1. Received: {value!r}")
    if len(encodings) > 1:
      raise FeatureConfigError(
          f"{where} needs at most one of vocabulary and vocabulary_file. "
          f"Received: {encodings}")
  elif len(encodings) != 1:
    raise FeatureConfigError(
        f"{where} needs exactly one of vocabulary, vocabulary_file, hash_buckets, "
        f"boundaries, or min_frequency / max_vocabulary_size (a vocabulary admitted "
        f"from training counts). Received: {encodings or 'none'}")
  if spec.unknown_values is not None:
    if not admission:
      raise FeatureConfigError(
          f"{where} sets unknown_values, which apply only to a vocabulary admitted from "
          "counts: set min_frequency or max_vocabulary_size as well.")
    if not isinstance(spec.unknown_values, list):
      raise FeatureConfigError(
          f"{where} needs unknown_values as a list. Received: {spec.unknown_values!r}")
    expected = str if spec.dtype == "string" else int
    wrong = [value for value in spec.unknown_values
             if not isinstance(value, expected) or isinstance(value, bool)]
    if wrong:
      raise FeatureConfigError(
          f"unknown_values of {where} must be {spec.dtype} values. Received: {wrong!r}")
  if spec.embedding_dim is not None and (
      not isinstance(spec.embedding_dim, int) or spec.embedding_dim < 1):
    raise FeatureConfigError(
        f"{where} needs a positive embedding_dim. Received: {spec.embedding_dim!r}")
  if spec.boundaries is not None:
    if spec.dtype == "string":
      raise FeatureConfigError(f"{where} is a string and cannot be bucketized by boundaries.")
    if not spec.boundaries or list(spec.boundaries) != sorted(spec.boundaries):
      raise FeatureConfigError(
          f"{where} needs non-empty, sorted boundaries. Received: {spec.boundaries!r}")
  elif spec.dtype == "float32":
    raise FeatureConfigError(
        f"{where} is float32 and needs boundaries (bucketized); a vocabulary or hashing "
        "of floats is not supported.")
  if spec.hash_buckets is not None and (
      not isinstance(spec.hash_buckets, int) or spec.hash_buckets < 1):
    raise FeatureConfigError(
        f"{where} needs a positive hash_buckets. Received: {spec.hash_buckets!r}")
  if not isinstance(spec.num_oov_buckets, int) or spec.num_oov_buckets < 1:
    raise FeatureConfigError(
        f"{where} needs num_oov_buckets >= 1. Received: {spec.num_oov_buckets!r}")
  if spec.vocabulary is not None:
    if not spec.vocabulary:
      raise FeatureConfigError(f"{where} has an empty vocabulary.")
    if len(set(spec.vocabulary)) != len(spec.vocabulary):
      raise FeatureConfigError(f"{where} has duplicate values in its vocabulary.")


def _validate_domain(domain: DomainSpec, spec: FeatureSpec) -> None:
  if not domain.values:
    raise FeatureConfigError("domain.values is empty: at least one domain is needed.")
  if len(set(domain.values)) != len(domain.values):
    raise FeatureConfigError(f"domain.values has duplicates: {domain.values!r}")
  expected_type = str if spec.dtype == "string" else int
  wrong = [value for value in domain.values
           if not isinstance(value, expected_type) or isinstance(value, bool)]
  if wrong:
    raise FeatureConfigError(
        f"domain.values must be {spec.dtype} like the domain feature {spec.name!r}. "
        f"Received: {wrong!r}")
  if domain.on_unknown not in UNKNOWN_DOMAIN_POLICIES:
    raise FeatureConfigError(
        f"domain.on_unknown must be one of {list(UNKNOWN_DOMAIN_POLICIES)}. "
        f"Received: {domain.on_unknown!r}")
  if domain.fallback is not None and domain.fallback not in domain.values:
    raise FeatureConfigError(
        f"domain.fallback {domain.fallback!r} is not one of domain.values {domain.values!r}")


def from_dict(raw: Dict[str, Any], base_dir: str = "") -> FeatureConfig:
  """Build a validated FeatureConfig from its JSON form."""
  if not isinstance(raw, dict):
    raise FeatureConfigError(f"A feature config must be a JSON object. Received: {type(raw)}")
  known_keys = {field.name for field in dataclasses.fields(FeatureConfig)} - {"base_dir"}
  unknown = sorted(set(raw) - known_keys)
  if unknown:
    raise FeatureConfigError(f"Unknown keys in the feature config: {unknown}")
  for key in ("features", "domain"):
    if key not in raw:
      raise FeatureConfigError(f"The feature config has no {key!r} entry.")
  features = [_build(FeatureSpec, item, f"features[{index}]")
              for index, item in enumerate(raw["features"])]
  domain = _build(DomainSpec, raw["domain"], "domain")
  rest = {key: value for key, value in raw.items() if key not in ("features", "domain")}
  return FeatureConfig(features=features, domain=domain, base_dir=base_dir, **rest)


def load(path: str) -> FeatureConfig:
  """Read and validate a feature config JSON file."""
  try:
    with open(path, encoding="utf-8") as handle:
      raw = json.load(handle)
  except OSError as error:
    raise FeatureConfigError(f"Cannot read feature config {path!r}: {error}") from error
  except json.JSONDecodeError as error:
    raise FeatureConfigError(f"Feature config {path!r} is not valid JSON: {error}") from error
  return from_dict(raw, base_dir=os.path.dirname(os.path.abspath(path)))


def _build(cls, raw: Any, where: str):
  if not isinstance(raw, dict):
    raise FeatureConfigError(f"{where} must be a JSON object. Received: {raw!r}")
  known = {field.name for field in dataclasses.fields(cls)}
  unknown = sorted(set(raw) - known)
  if unknown:
    raise FeatureConfigError(f"Unknown keys in {where}: {unknown}. Known keys: {sorted(known)}")
  try:
    return cls(**raw)
  except TypeError as error:
    raise FeatureConfigError(f"Invalid {where}: {error}") from error


def check_columns(config: FeatureConfig, columns: Sequence[str], source: str) -> None:
  """Raise FeatureConfigError if a configured feature is not among `columns`."""
  available = set(columns)
  missing = [spec.name for spec in config.features if spec.name not in available]
  if missing:
    raise FeatureConfigError(
        f"Columns {missing} of the feature config are missing from {source}. "
        f"Columns found: {sorted(available)}")
