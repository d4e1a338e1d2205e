"""Typed configuration for one dataset: one TOML file describes the whole pipeline.

Why typed: a misspelt key or a bad value must fail at load time with the field's
dotted path in the message, not halfway through a nightly run.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticSource(_Strict):
    """Parameters of the built-in synthetic multi-sensor generator."""

    entities: int = Field(4, ge=1, le=10_000)
    sensors: int = Field(12, ge=2, le=128)
    days: int = Field(21, ge=3)
    freq_minutes: int = Field(5, ge=1)
    anomalies_per_entity: int = Field(8, ge=0)
    seed: int = 7
    start: datetime = datetime(2026, 1, 5)
    clean_days: int = Field(
        14, ge=1, description="leading days without injected anomalies (the training period)"
    )
    corrupt_deliveries: int = Field(
        0, ge=0, description="extra re-sent day files with a broken sensor column, to show quarantine"
    )


class SourceConfig(_Strict):
    """Where raw batches come from: a file, a directory or glob of files, or any fsspec URL."""

    path: str = Field(..., description="path, glob or fsspec URL; each file is one batch")
    format: Literal["auto", "csv", "parquet"] = "auto"
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold keys
    workers: int = Field(
        2, ge=1, le=64, description="new batches validated at once (threads of the ingest task)"
    )
    synthetic: SyntheticSource | None = Field(
        None, description="when set, `path` is filled by the synthetic generator first"
    )


class ColumnsConfig(_Strict):
    """Which columns mean what in the raw input."""

    timestamp: str = "timestamp"
    entity: str | None = "entity"
    features: list[str] = Field(..., min_length=1)
    label: str | None = "label"

    @model_validator(mode="after")
    def _distinct(self) -> ColumnsConfig:
        names = [self.timestamp, *self.features]
        names += [c for c in (self.entity, self.label) if c]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"column names used twice: {duplicated}")
        return self

    @property
    def key(self) -> list[str]:
        return [c for c in (self.entity, self.timestamp) if c]


class ValidationRules(_Strict):
    """Rules the Great Expectations suite is built from."""

    value_min: float | None = Field(None, description="lower bound for every feature")
    value_max: float | None = Field(None, description="upper bound for every feature")
    feature_bounds: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="per-feature [min, max] overriding the global bounds"
    )
    min_rows: int = Field(1, ge=1)
    labels: list[int] = Field(default_factory=lambda: [0, 1])
    not_before: datetime | None = Field(
        None, description="timestamps before this (naive UTC) are refused: the dataset's start"
    )
    future_tolerance_hours: float = Field(
        24.0, ge=0, description="timestamps later than now + this are refused (clock errors)"
    )
    max_entity_length: int = Field(200, ge=1, description="longer entity names are refused")
    on_conflict: Literal["quarantine", "replace"] = Field(
        "quarantine",
        description="a key another source already filed with different values: refuse the "
        "batch (quarantine) or let the later delivery win (replace, recorded)",
    )
    volume_factor: float = Field(
        10.0, gt=1, description="report an entity whose rows in a night reach this x its usual"
    )
    volume_days: int = Field(7, ge=1, description="trailing validated days that define 'usual'")


MiB = 1 << 20


class LimitsConfig(_Strict):
    """Bounds on what a delivery may bring and what the pipeline keeps. A source file past a
    bound is quarantined with a one-line reason that names the file, the bound and its
    value; reading checks a bound before (listing size, Parquet metadata) or while (streamed
    decompression) it would cost memory, so one bad file cannot take the night down."""

    file_bytes: int = Field(1024 * MiB, ge=1, description="a source file's size as listed and "
                            "read; a larger one is quarantined unread (not copied: the source "
                            "keeps it). The default holds a fleet's day in one CSV: 695 "
                            "entities x 1,440 rows x 38 sensors is ~730 MB")
    decompressed_bytes: int = Field(1024 * MiB, ge=1, description="a gzip / zstd CSV's size "
                                    "once decompressed, or a Parquet file's uncompressed data "
                                    "(from its metadata); counted in a streaming pass first")
    columns: int = Field(2048, ge=1, description="columns in a file's header or schema")
    line_bytes: int = Field(1 * MiB, ge=1, description="one CSV line (a record) in bytes")
    entities_per_batch: int = Field(50_000, ge=1, description="distinct entities in one file")
    model_scopes: int = Field(1000, ge=1, description="entity / group scope: models trained "
                              "per dataset; entities past it (fewest train rows first) are "
                              "reported unmodelled and scored by the fallback model")
    alert_ledger_days: int = Field(90, ge=1, description="alert ledger entries older than "
                                   "this (by segment start) are dropped when a night alerts")


class ScalingConfig(_Strict):
    method: Literal["standard", "robust", "minmax"] = "standard"


RowRule = Literal["mean_window", "mean_elem", "last_window", "max_window"]
"""How window element scores become row scores (models/scoring.py has the rules): "mean_window"
gives a row the mean, over every window covering it, of each window's per-feature mean over its
steps; "mean_elem" the mean of the element scores at the row's own step; "last_window" the
means of the window ending at the row; "max_window" those of the covering window with the
largest total. Versions registered before the field existed used "mean_elem" (`LEGACY_ROW_RULE`)."""
ROW_RULES: tuple[str, ...] = get_args(RowRule)
DEFAULT_ROW_RULE: RowRule = "mean_window"
LEGACY_ROW_RULE: RowRule = "mean_elem"


class WindowConfig(_Strict):
    length: int = Field(16, ge=1, le=4096)
    stride: int = Field(1, ge=1)
    row_rule: RowRule = Field(
        DEFAULT_ROW_RULE, description="window -> row rule, fixed at training and recorded in the "
        "version (config.json `window`), since the feature scale, threshold and drift reference "
        "are fitted under it; nightly scoring applies the version's own rule. \"mean_window\": "
        "+0.12..0.17 validation PR-AUC over \"mean_elem\" on 9 of 10 dev series (issue 10, "
        "benchmarks/results/ablation.md)")


class TimeRange(_Strict):
    """Half-open time range [start, end)."""

    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _ordered(self) -> TimeRange:
        if self.end <= self.start:
            raise ValueError(f"end {self.end} must be after start {self.start}")
        return self


class SplitsConfig(_Strict):
    train: TimeRange
    validation: list[TimeRange] = Field(..., min_length=1)
    score: TimeRange | None = None
    train_on_normal_only: bool = Field(
        True, description="drop windows that carry a positive label from the training set"
    )


class TrainingConfig(_Strict):
    """Settings of the shared training engine (every family uses the same loop)."""

    epochs: int = Field(5, ge=1, description="5, with max_train_windows 5000: the budget "
                        "benchmarks/RESULTS.md measured (the dev benchmark), so a config "
                        "without [training] gets the measured numbers")
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    patience: int = Field(5, ge=1)
    holdout_fraction: float = Field(0.1, gt=0, lt=0.5)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int = Field(
        1, ge=1, description="torch intra-op threads on the CPU. 1 by default: inside Prefect's "
        "process (API server, log shipping threads) 2 OpenMP threads on 2 cores spin-wait and made "
        "the demo 5x slower (3:58 vs 0:44); raise it for large models on many-core hosts",
    )
    amp: bool = True
    compile: bool = False
    max_train_windows: int | None = Field(5000, ge=1, description="train on a random sample of "
                                          "this many windows (holdout included): the "
                                          "benchmarked budget")


class FamilyConfig(_Strict):
    """One model family to train, with its own hyper-parameters (checked by the family)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(
        default_factory=dict, description="overrides of [training] for this family only"
    )


ThresholdMethod = Literal["percentile", "mean_3sigma", "max_f1", "target_fpr", "youden"]


class ThresholdConfig(_Strict):
    method: ThresholdMethod = "target_fpr"
    percentile: float = Field(95.0, gt=0, lt=100)
    target_fpr: float = Field(0.05, gt=0, lt=1)
    per_entity: bool = Field(
        True, description="a model over several entities calibrates each entity with enough "
        "normal validation rows on its own rows (threshold and p-value reference)")
    min_entity_rows: int = Field(
        200, ge=1, description="normal validation rows an entity needs for its own threshold; "
        "entities with fewer use the pooled one")


class SelectionConfig(_Strict):
    """How the champion is picked. "prior": a prior champion (shipped per kind of data,
    pooled over a fleet's scopes) kept unless a challenger beats it on the scope's own
    validation events with confidence. "metric": the validation metric (a key of
    tasks.evaluation.metrics.evaluate), higher wins. "evidence": real and injected labels
    combined, falling back to the ensemble when they do not separate (README)."""

    metric: Literal["pr_auc", "roc_auc", "best_f1", "vus_pr", "pa_k_auc", "event_recall", "f1"] = (
        "pr_auc"
    )
    rule: Literal["prior", "metric", "evidence"] = Field(
        "prior", description="prior by default: leaving each dev series out, the prior its "
        "kind's other series gave scored 0.555 / 0.620 score PR-AUC (multivariate / "
        "univariate) where the metric rule's champion scored 0.297 / 0.599 "
        "(benchmarks/results/selection_priors.md)")
    kind: Literal["multivariate", "univariate", "table"] | None = Field(
        None, description="which shipped prior (schemas/selection_priors.json); default: "
        "inferred, a window of 1 is a table, one feature univariate, else multivariate")
    prior: str | None = Field(None, description="a family to use as the prior instead of the "
                              "shipped ranking's first")
    injected_events: int = Field(20, ge=0, description="synthetic anomalies injected on normal "
                                 "validation stretches (the kinds in turn)")
    injected_weight: float = Field(0.25, ge=0, description="an injected event's weight "
                                   "against a real one")
    bootstrap: int = Field(500, ge=10, description="resamples behind the confidence of a "
                           "challenger (prior rule) or of the fallback test (evidence rule)")
    confidence: float = Field(0.9, gt=0.5, lt=1, description="share of resamples a challenger "
                              "must beat the prior in (corrected for the number of challengers: "
                              "1 - (1 - confidence) / (candidates - 1)); the evidence rule's "
                              "top candidate must beat the ensemble in it")
    min_events: float = Field(3.0, ge=0, description="labelled events below which the prior "
                              "(the ensemble, for the evidence rule) is kept")
    min_margin: float = Field(0.0, ge=0, description="validation gain a challenger must lead "
                              "the prior by (prior rule)")
    seed: int = 0


class EnsembleConfig(_Strict):
    """The ensemble candidate: members' row scores on a common scale, summed (README)."""

    enabled: bool = True
    members: list[str] | None = Field(
        None, description="families to combine; default: every family of the run that "
        "registered with a verified ONNX graph")
    min_members: int = Field(2, ge=2, description="fewer usable members: no ensemble")
    max_correlation: float | None = Field(
        None, gt=0, le=1, description="members chosen for diversity: strongest on validation "
        "first, then each whose rank correlation with every kept member on normal train rows "
        "is at most this (None: every member)")
    combiner: Literal["robust_z", "cauchy"] = Field(
        "robust_z", description="robust_z: each member's scores over its IQR on normal train "
        "rows (the robust-z mean up to a constant); cauchy: each member's tail p-value against "
        "its normal train rows, combined by the Cauchy statistic, so one member's lone catch "
        "is kept (tasks.evaluation.combiners)")


class ScoringConfig(_Strict):
    """How nightly scoring runs the champion."""

    backend: Literal["torch", "onnx"] = Field(
        "torch", description="onnx: the version's model.onnx on ONNX Runtime's CPU provider"
    )
    threads: int = Field(
        1, ge=0, description="ONNX Runtime intra-op threads (0: one per core); 1 like "
        "training.cpu_threads, since spinning pool threads compete with Prefect's own"
    )


class DriftConfig(_Strict):
    """When a night counts as drifted (compared with the champion's training reference)."""

    ks_threshold: float = Field(0.2, gt=0, le=1, description="per-feature KS statistic")
    psi_threshold: float = Field(0.25, gt=0, description="per-feature population stability index")
    min_drifted_features: int = Field(1, ge=1)
    score_ks_threshold: float = Field(0.3, gt=0, le=1, description="KS of night vs train scores")
    max_anomaly_rate: float = Field(0.2, gt=0, le=1)
    bins: int = Field(10, ge=2, le=100, description="quantile bins of the PSI reference")
    cooldown_hours: float = Field(24.0, ge=0, description="no second drift event within this")


class AlertConfig(_Strict):
    """Anomaly alerts: one per contiguous segment at or above the alert level."""

    level: float = Field(1.0, gt=0, description="alert when score >= level x threshold")
    min_rows: int = Field(1, ge=1, description="shorter segments are not alerted")
    webhook_url_env: str = "NIGHTOWL_ALERT_WEBHOOK_URL"
    webhook_secret_block: str | None = Field(None, description="Prefect Secret block holding the URL")
    max_per_night: int = Field(50, ge=1)


class RetrainConfig(_Strict):
    """Retraining on drift: a rolling window, promoted only when it beats the champion."""

    train_days: int = Field(14, ge=1)
    validation_days: int = Field(3, ge=1)
    min_improvement: float = Field(0.0, ge=0, description="challenger must beat champion by this")


Verdict = Literal["anomaly", "normal", "unsure"]
"""An operator's answer about a period of one entity: a real anomaly, a false alarm (normal),
or cannot tell. The labels table holds only these three (tasks/feedback/labels.py)."""
VERDICTS: tuple[str, ...] = get_args(Verdict)


class LabelImportColumns(_Strict):
    """Which columns of an incident export (CSV from a ticketing system) mean what."""

    entity: str = "entity"
    start: str = "start"
    end: str = "end"
    verdict: str = "verdict"
    note: str | None = Field("note", description="free text kept with the label; none: no note")
    who: str | None = Field(None, description="who reported it; none: the importing user")
    id: str | None = Field(
        None, description="the ticket's id: part of each row's idempotency key (with every other "
        "mapped value), so re-importing the same export writes nothing twice")


class FeedbackConfig(_Strict):
    """Operators' labels: the review form after a night, and incident imports."""

    top_k: int = Field(5, ge=1, description="a review lists the top segments of each model "
                       "scope by peak score over threshold")
    review_budget: int = Field(20, ge=1, description="at most this many segments in one night's "
                               "review form, over all model scopes (what an operator answers)")
    review_timeout_hours: float = Field(
        72.0, gt=0, description="an unanswered review expires (the run fails as 'paused and "
        "never resumed'; nothing is written)")
    import_columns: LabelImportColumns = LabelImportColumns()
    import_verdicts: dict[str, Verdict] = Field(
        default_factory=dict, description="raw verdict values of the export -> verdict, e.g. "
        "{ \"false positive\" = \"normal\" }; values that are already a verdict need no entry")
    import_time_format: str | None = Field(
        None, description="strptime format of the export's start/end; none: ISO 8601. Times "
        "without an offset are UTC")
    use_labels: bool = Field(True, description="training and retraining calibrate and select "
                             "on the configured validation slices plus every labelled period")
    adapt_confidence: float = Field(
        0.95, gt=0.5, lt=1, description="recalibrate an entity's threshold when a one-sided "
        "binomial test says, at this confidence, that its false-alarm rate on reviewed normal "
        "rows exceeds threshold.target_fpr")
    min_reviewed_rows: int = Field(10, ge=1, description="an entity needs this many reviewed "
                                   "normal rows before its threshold is recalibrated")
    missed_incidents: int = Field(3, ge=1, description="this many anomaly labels recorded since "
                                  "the champion's promotion, on periods it scored wholly below "
                                  "its threshold, raise the drift event (retraining)")


ModelScope = Literal["dataset", "entity", "group"]
SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # with fullmatch: "$" accepts "x\n"
HASHED_KEY = re.compile(r"h-[0-9a-f]{16}")


def scope_slug(name: str) -> str:
    """A group or entity name as a store-key component: itself when safe, else a stable hash
    (entity names come from the data and may hold '/', spaces or '..').

    A safe name that looks like a hash (`h-` + 16 hex) is hashed too: kept as is, an entity
    literally named so would share its champion, ledger and drift state with the entity
    whose name hashes to it. So a slug in hash form always is a hash, and two names share
    a slug only if sha256 collides in its first 64 bits."""
    if SAFE_KEY.fullmatch(name) and ".." not in name and not HASHED_KEY.fullmatch(name):
        return name
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:16]


class ModelConfig(_Strict):
    """What one model covers. Machines in a fleet differ (SMD and ASD are evaluated one
    model per machine), so a dataset can train one model per entity or per group of
    entities, each with its own scaler, families, threshold, champion, drift reference,
    retraining decisions and alert ledger."""

    scope: ModelScope = "dataset"
    groups: dict[str, list[str]] = Field(
        default_factory=dict, description="scope = group: group name -> its entities")
    fallback: bool = Field(
        True, description="entity/group scope: also train one dataset-level model that scores "
        "entities without a model of their own (new entities); false: report them unscored")
    min_train_rows: int = Field(
        64, ge=1, description="an entity or group with fewer train rows gets no model (reported)")

    @model_validator(mode="after")
    def _groups(self) -> ModelConfig:
        if self.scope == "group" and not self.groups:
            raise ValueError("scope 'group' needs [model.groups]: group name -> list of entities")
        if self.scope != "group" and self.groups:
            raise ValueError(f"[model.groups] is only used with scope 'group', not {self.scope!r}")
        seen: dict[str, str] = {}
        for group, entities in self.groups.items():
            for entity in entities:
                if entity in seen:
                    raise ValueError(f"entity {entity!r} is in groups {seen[entity]!r} and {group!r}")
                seen[entity] = group
        return self


class RunnerConfig(_Strict):
    """Where the fanned-out tasks (group x family training, nightly shards) run: Prefect's
    thread pool in this process, or a Dask cluster through prefect-dask."""

    kind: Literal["thread", "dask"] = "thread"
    max_workers: int = Field(
        4, ge=1, description="thread pool size. Trainings in one process take turns (torch's "
        "random generator is process-global, and results must not depend on timing); the other "
        "stages run side by side. Dask worker processes train in parallel")
    address: str | None = Field(
        None, description="Dask scheduler address; the env NIGHTOWL_DASK_ADDRESS overrides it; "
        "none: a LocalCluster of worker processes for the run")
    n_workers: int = Field(2, ge=1, description="LocalCluster worker processes")
    threads_per_worker: int = Field(1, ge=1)
    gpu_resource: str | None = Field(
        None, description="Dask resource that training tasks require (workers with a GPU are "
        "started with `--resources GPU=1`); none: any worker trains")
    shard_rows: int = Field(
        250_000, ge=1000, description="nightly scoring: rows of one shard task (bounds memory)")


STORE_SCHEMES = ("file", "s3")
"""Store roots nightowl can keep its promises on: compare-and-swap is a file lock locally and
a conditional PUT on S3. fsspec opens more (memory://, gs://, az://), but writes there cannot
be made conditional by nightowl, so those roots are refused at load, not halfway through a run."""


def unsupported_store_root(root: str) -> str | None:
    """Why `root` cannot be a store root, or None (a path without a scheme is local)."""
    scheme = root.split("://", 1)[0].lower() if "://" in root else "file"
    if scheme in STORE_SCHEMES:
        return None
    return (f"store root {root!r}: scheme {scheme}:// is not supported, use "
            + " or ".join(f"{s}://" for s in STORE_SCHEMES))


class StoreConfig(_Strict):
    root: str = Field("file://./.nightowl", description="file:// or s3://bucket/prefix")
    storage_options: dict[str, Any] = Field(default_factory=dict, repr=False)  # may hold keys
    credentials_block: str | None = Field(
        None, description="name of a prefect-aws AwsCredentials block: S3 credentials (and its "
        "endpoint and region) from Prefect instead of the environment"
    )
    retention_days: float = Field(
        30.0, gt=0, description="how far back the Delta tables' time travel reaches: "
        "maintenance vacuums files no snapshot younger than this needs (a model's training "
        "set can be rebuilt while it is younger)"
    )

    @field_validator("root")
    @classmethod
    def _supported_scheme(cls, root: str) -> str:
        if problem := unsupported_store_root(root):
            raise ValueError(problem)
        return root

    @model_validator(mode="after")
    def _block_needs_s3(self) -> StoreConfig:
        if self.credentials_block and not self.root.startswith("s3://"):
            raise ValueError(f"credentials_block needs an s3:// root, not {self.root!r}")
        return self


class UIConfig(_Strict):
    """How plots and store links in Prefect artifacts reach the browser that shows the UI."""

    images: Literal["auto", "inline", "url"] = Field(
        "auto", description="inline: PNGs embedded as data: URIs (work anywhere, never expire, "
        "stored in Prefect's database); url: presigned S3 URLs or store_url; auto: url where the "
        "browser can load one (an s3:// store or store_url), else inline"
    )
    store_url: str | None = Field(
        None, pattern=r"^https?://", description="an http(s) URL at which the store root is "
        "served (e.g. `python -m http.server -d <store>`, a CDN): links and images use it"
    )
    presign_expiry_hours: float = Field(
        168.0, gt=0, le=168, description="lifetime of presigned S3 URLs (SigV4 allows 7 days)"
    )


class DatasetConfig(_Strict):
    """Everything nightowl needs to know about one dataset."""

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9_-]*$")
    source: SourceConfig
    columns: ColumnsConfig
    validation: ValidationRules = ValidationRules()
    limits: LimitsConfig = LimitsConfig()
    scaling: ScalingConfig = ScalingConfig()
    window: WindowConfig = WindowConfig()
    splits: SplitsConfig
    families: list[FamilyConfig] = Field(..., min_length=1)
    training: TrainingConfig = TrainingConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    selection: SelectionConfig = SelectionConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    store: StoreConfig = StoreConfig()
    scoring: ScoringConfig = ScoringConfig()
    drift: DriftConfig = DriftConfig()
    alerts: AlertConfig = AlertConfig()
    retrain: RetrainConfig = RetrainConfig()
    model: ModelConfig = ModelConfig()
    ui: UIConfig = UIConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    runner: RunnerConfig = RunnerConfig()
    _group: str | None = PrivateAttr(None)
    """Runtime state, not a setting: set by nightowl (`for_group`) when it fans out over
    entities or groups; None: the whole dataset. Private, so no config file can set it and
    `model_dump` never writes it."""
    _file: str | None = PrivateAttr(None)  # the TOML it was loaded from (holds the secrets)

    @property
    def file(self) -> str | None:
        """The absolute path of the config file this was loaded from (kept by copies)."""
        return self._file

    @property
    def group(self) -> str | None:
        """The entity or group this copy of the config trains and scores (None: the dataset)."""
        return self._group

    @property
    def scope_name(self) -> str:
        """The key prefix of everything model-scoped (versions, champion, scaler, drift
        reference, decisions, alert ledger): the dataset, or dataset/groups/<group>."""
        return self.name if self.group is None else f"{self.name}/groups/{scope_slug(self.group)}"

    @property
    def label(self) -> str:
        """How logs and artifacts name this scope."""
        return self.name if self.group is None else f"{self.name}[{self.group}]"

    def group_entities(self) -> list[str] | None:
        """The entities this scope covers; None: every entity of the dataset."""
        if self.group is None:
            return None
        if self.model.scope == "group":
            return list(self.model.groups[self.group])
        return [self.group]

    def for_group(self, group: str | None) -> DatasetConfig:
        """This config narrowed to one entity or group (None: the dataset-level scope)."""
        if group is not None and self.model.scope == "group" and group not in self.model.groups:
            raise ValueError(f"group {group!r} is not in [model.groups]: {sorted(self.model.groups)}")
        narrowed = self.model_copy()
        narrowed._group = group
        return narrowed

    def group_of(self, entity: str) -> str | None:
        """The group an entity's model belongs to under this dataset's scope (None: no group)."""
        if self.model.scope == "entity":
            return entity
        if self.model.scope == "group":
            return next((g for g, members in self.model.groups.items() if entity in members), None)
        return None

    @model_validator(mode="after")
    def _ui_urls_reachable(self) -> DatasetConfig:
        if (self.ui.images == "url" and not self.ui.store_url
                and not self.store.root.startswith("s3://")):
            raise ValueError("ui.images = 'url' needs an s3:// store root or ui.store_url "
                             "(a browser cannot load file:// images from the Prefect UI)")
        return self

    def training_for(self, family: FamilyConfig) -> TrainingConfig:
        """The engine settings for one family: the shared ones with its overrides."""
        return TrainingConfig.model_validate({**self.training.model_dump(), **family.training})


# Where a user may put a secret. None of these may travel as a flow-run parameter: Prefect
# keeps parameters in its database and shows them in the UI (`repr=False` hides a field
# from repr only, not from Prefect's serializer). A source path is one when it carries a
# query (a presigned token) or user:password@.
SECRET_FIELDS: dict[str, tuple[str, ...]] = {
    "source": ("path", "storage_options"),
    "store": ("storage_options", "credentials_block"),
    "alerts": ("webhook_secret_block",),
}


def _secret_values(cfg: DatasetConfig) -> dict[str, Any]:
    return {f"{section}.{name}": getattr(getattr(cfg, section), name)
            for section, names in SECRET_FIELDS.items() for name in names}


def _is_secret(field: str, value: Any) -> bool:
    if field == "source.path":
        parts = urlsplit(str(value))
        return bool(parts.query) or "@" in parts.netloc
    return bool(value)


class ConfigRef(BaseModel):
    """What a flow run takes instead of a DatasetConfig: the config file (which holds the
    secrets, read again where the run executes) and every other setting, so a caller's
    in-memory changes (a model scope, a rolling window, a benchmark's caps) travel while no
    secret reaches Prefect's database. A config without a file may be passed only when it
    holds no secret."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str | None = Field(None, description="the config file the secrets come from")
    settings: dict[str, Any] = Field(..., description="every setting but the secret ones")
    group: str | None = Field(None, description="the entity or group the config was narrowed to")

    @classmethod
    def of(cls, cfg: DatasetConfig) -> ConfigRef:
        if cfg.file is None:
            held = sorted(f for f, v in _secret_values(cfg).items() if _is_secret(f, v))
            if held:
                raise ConfigError(f"dataset '{cfg.name}': a config holding secrets ({', '.join(held)}) "
                                  "must be loaded from a file to be passed to a flow")
            return cls(settings=cfg.model_dump(mode="json"), group=cfg.group)
        if _secret_values(load_config(cfg.file)) != _secret_values(cfg):
            raise ConfigError(f"dataset '{cfg.name}': secret settings ({', '.join(_secret_values(cfg))}) "
                              f"were changed in memory; they must be those of {cfg.file}")
        exclude = {section: set(names) for section, names in SECRET_FIELDS.items()}
        return cls(path=cfg.file, settings=cfg.model_dump(mode="json", exclude=exclude),
                   group=cfg.group)

    def resolve(self) -> DatasetConfig:
        """The full config: these settings with the secrets read from the file."""
        if self.path is None:
            return parse_config(self.settings, origin="flow parameter").for_group(self.group)
        secrets = _secret_values(load_config(self.path))
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in self.settings.items()}
        for field, value in secrets.items():
            section, name = field.split(".")
            data.setdefault(section, {})[name] = value
        cfg = parse_config(data, origin=self.path)
        cfg._file = self.path
        return cfg.for_group(self.group)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        lines.append(f"field '{where}': {e['msg']}")
    return "; ".join(lines)


def parse_config(data: dict[str, Any], origin: str = "<dict>") -> DatasetConfig:
    """Validate a config mapping; errors name the origin and every bad field."""
    try:
        return DatasetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(f"{origin}: {_format_errors(err)}") from None


def load_config(path: str | Path) -> DatasetConfig:
    """Load a dataset config from TOML (relative paths in it resolve against the working directory)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    cfg = parse_config(data, origin=str(path))
    cfg._file = str(path.resolve())
    return cfg


def default_config_path() -> Path:
    """The embedded demo config shipped inside the package."""
    return Path(__file__).with_name("datasets") / "synthetic.toml"
