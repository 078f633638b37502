"""``imgcls tune``: hyperparameter search with Optuna over ``imgcls train``'s recipe.

Each trial is a complete training run (``trainer.train.train``) of the base config with the values the
sampler (TPE) picked from the search space (``trainer.search_space``), judged by its best validation
score; a pruner stops a poor trial between epochs. The study lives in an Optuna storage: SQLite in the
study folder by default, a PostgreSQL URL for several workers. Workers on one study never run the same
trial, and ``trials`` is the study's total, so a killed or extended search reruns only what is missing.
A trial whose worker died is failed after its heartbeat goes stale and run again with the same values.

The study folder holds the trials' run directories and, rewritten after every trial: ``trials.csv``,
``summary.md``, ``importance.png`` and ``best.yaml``, the best trial's full config for ``imgcls train``.
The test split never steers the search; its accuracy is only listed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from imgcls.errors import ConfigError, ModelError
from trainer.config import RunConfig, config_digest, load_config
from trainer.search_space import SearchSpace, load_search_space
from trainer.train import train

__all__ = ["TuneRequest", "TuneResult", "tune"]

log = logging.getLogger("imgcls.tune")

# Trial states that use up the study's budget: the finished, and those a worker is running or will run.
_COUNTED = ("COMPLETE", "PRUNED", "RUNNING", "WAITING")
# A trial failed for its own values (diverged, too big for memory, a combination the model refuses):
# recorded with the reason, and the search goes on. Anything else stops the worker.
_TRIAL_ERRORS = (FloatingPointError, ConfigError, ModelError, torch.OutOfMemoryError)


@dataclass(frozen=True)
class TuneRequest:
    config_path: Path
    space_path: Path
    trials: int  # the study's total
    study_name: str
    overrides: tuple[str, ...] = ()
    values: tuple[tuple[str, Any], ...] = ()  # named options (--data) as config fields
    storage: str | None = None  # None: SQLite in the study folder
    out_dir: Path | None = None  # None: runs_dir / study_name
    heartbeat_s: int = 60
    seed: int | None = None


@dataclass(frozen=True)
class TuneResult:
    study_dir: Path
    states: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_config: Path | None
    metric: str


def tune(request: TuneRequest) -> TuneResult:
    import optuna

    space = load_search_space(request.space_path)
    values = dict(request.values)
    overrides = list(request.overrides)
    base = load_config(request.config_path, overrides, values)
    space.check_against(request.config_path, overrides, values)
    metric = space.objective_metric(base)
    study_dir = request.out_dir or base.runs_dir / request.study_name
    study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its per-trial lines: ours say more
    # the heartbeat and the retry of a dead worker's trial are marked experimental (stable since 2.9)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    study = _open_study(request, space, base, study_dir)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, then retried with its values

    def objective(trial: optuna.Trial) -> float:
        return _run_trial(trial, request, space, metric, study_dir)

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _log_trial(trial, metric)
        write_summary(study, space, base, study_dir)
        if _counted(study) >= request.trials:
            study.stop()

    done = _counted(study)
    if done >= request.trials:
        log.info(
            "study %s already has %d of %d trials; nothing to run", request.study_name, done, request.trials
        )
    else:
        log.info(
            "study %s: %d of %d trials done or running; %s %s on validation (%s)",
            request.study_name,
            done,
            request.trials,
            "minimising" if space.direction(base) == "minimize" else "maximising",
            metric,
            study_dir,
        )
        quiet = logging.getLogger("imgcls.train")
        level = quiet.level
        quiet.setLevel(logging.WARNING)  # one line per trial here, not one per epoch
        try:
            study.optimize(objective, callbacks=[after_trial], catch=_TRIAL_ERRORS)
        finally:
            quiet.setLevel(level)
    best_config = write_summary(study, space, base, study_dir)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    best = _best_trial(study)
    return TuneResult(
        study_dir,
        dict(states),
        best.value if best else None,
        best.number if best else None,
        best_config,
        metric,
    )


def _open_study(request: TuneRequest, space: SearchSpace, base: RunConfig, study_dir: Path) -> Any:
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
    from sqlalchemy.exc import DBAPIError

    url = request.storage or f"sqlite:///{(study_dir / 'study.db').resolve()}"
    try:
        url, engine_kwargs = _storage_url(url)
        for attempt in range(5):
            try:
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=request.heartbeat_s,
                    grace_period=2 * request.heartbeat_s,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
                )
                break
            except DBAPIError:
                # Workers started together on an empty database race to create Optuna's tables (the
                # loser finds them made on its next try), and a database starting beside them refuses
                # connections for a while: try for about five seconds before giving up.
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except RuntimeError as exc:
        if "compatible with the table schema" not in str(exc):
            raise
        # Optuna keeps its schema version in an alembic_version table; so do other applications
        raise ConfigError(
            f"the database of {_masked(url)} already holds another application's Alembic version table "
            "(imgcls's feedback store keeps one, for example): give the search a database of its own"
        ) from None
    except Exception as exc:  # SQLAlchemy's and the drivers' errors: the URL or the server is wrong
        raise ConfigError(
            f"cannot open the study storage {_masked(url)}: {type(exc).__name__}: {str(exc).splitlines()[0]}; "
            "check --storage (e.g. postgresql+psycopg://user:password@host:5432/db)"
        ) from None
    pruner = {
        "median": lambda: optuna.pruners.MedianPruner(
            n_startup_trials=space.startup_trials, n_warmup_steps=1
        ),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.train.epochs),
        "none": optuna.pruners.NopPruner,
    }[space.pruner]()
    study = optuna.create_study(
        storage=storage,
        sampler=optuna.samplers.TPESampler(seed=request.seed),
        pruner=pruner,
        study_name=request.study_name,
        direction=space.direction(base),
        load_if_exists=True,
    )
    # A study is one question: the same recipe over the same space. Another in its name would mix results.
    identity = {
        "recipe": config_digest(base),
        "space": hashlib.sha256(space.model_dump_json().encode()).hexdigest(),
        "metric": space.objective_metric(base),
    }
    recorded = study.user_attrs
    if not recorded:
        for key, value in identity.items():
            study.set_user_attr(key, value)
    elif any(recorded.get(k) != v for k, v in identity.items()):
        changed = ", ".join(k for k, v in identity.items() if recorded.get(k) != v)
        raise ConfigError(
            f"study {request.study_name!r} in {_masked(url)} was started with another {changed}; "
            "rerun it with the config and space it started with, or name a new study with --study"
        )
    return study


def _storage_url(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL and engine options for a storage URL: a plain ``postgresql://`` (as
    CloudNativePG's secrets give it) uses psycopg 3, which imgcls installs; SQLite waits for a lock
    instead of failing while another local worker writes."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return url, {"connect_args": {"timeout": 60}}
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            url = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return url, {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
    return url, {}


def _run_trial(trial: Any, request: TuneRequest, space: SearchSpace, metric: str, study_dir: Path) -> float:
    import optuna

    params = {name: param.suggest(trial, name) for name, param in space.params.items()}
    run_name = f"trial-{trial.number:04d}"
    config = load_config(
        request.config_path,
        list(request.overrides),
        {
            **dict(request.values),
            **params,
            "run_name": run_name,
            "runs_dir": study_dir / "trials",
            "train.early_stopping_metric": metric,
            "export.enabled": False,
        },
    )
    trial.set_user_attr("run_dir", str(config.runs_dir / run_name))

    def report(epoch: int, val_stats: dict[str, float]) -> None:
        trial.report(val_stats[metric], epoch)
        if trial.should_prune():
            trial.set_user_attr("epochs", epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")

    try:
        result = train(config, config_name=run_name, on_epoch=report)
    except _TRIAL_ERRORS as exc:
        trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
        raise
    summary = json.loads((result.run_dir / "metrics.json").read_text(encoding="utf-8"))
    trial.set_user_attr("epochs", summary["epochs_run"])
    trial.set_user_attr("best_epoch", summary["best_epoch"])
    trial.set_user_attr("test_accuracy", summary["test"]["accuracy"])
    return float(summary["best_val"][metric])


def _counted(study: Any) -> int:
    return sum(t.state.name in _COUNTED for t in study.get_trials(deepcopy=False))


def _best_trial(study: Any) -> Any:
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    return study.best_trial if finished else None


def _log_trial(trial: Any, metric: str) -> None:
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    state = trial.state.name
    if state == "COMPLETE":
        log.info("trial %d: val %s %.4f (%s)", trial.number, metric, trial.value, params)
    elif state == "PRUNED":
        log.info(
            "trial %d: pruned after epoch %s (%s)", trial.number, trial.user_attrs.get("epochs", "?"), params
        )
    else:
        log.warning("trial %d: failed: %s (%s)", trial.number, trial.user_attrs.get("error", state), params)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _masked(url: str) -> str:
    """A storage URL fit for a log: without its password."""
    return re.sub(r"(://[^:/@]+:)[^@]+@", r"\1***@", url)


# --- the study folder: what a person reads, rewritten after every trial ---


def write_summary(study: Any, space: SearchSpace, base: RunConfig, study_dir: Path) -> Path | None:
    """trials.csv, summary.md, importance.png and, once a trial has finished, best.yaml (its path)."""
    trials = study.get_trials(deepcopy=False)
    metric = space.objective_metric(base)
    names = list(space.params)
    rows = [
        {
            "trial": t.number,
            "state": t.state.name,
            f"val_{metric}": "" if t.value is None else f"{t.value:.6g}",
            "epochs": t.user_attrs.get("epochs", len(t.intermediate_values) or ""),
            "test_accuracy": t.user_attrs.get("test_accuracy", ""),
            "seconds": f"{t.duration.total_seconds():.1f}" if t.duration else "",
            **{name: t.params.get(name, "") for name in names},
            "run_dir": t.user_attrs.get("run_dir", ""),
            "error": t.user_attrs.get("error", ""),
        }
        for t in trials
    ]
    _write_atomically(study_dir / "trials.csv", _csv_text(rows))
    importances, importance_note = _importances(study)
    if importances:
        _plot_importances(importances, study_dir / "importance.png", metric)
    best = _best_trial(study)
    best_config = None
    if best is not None:
        best_config = study_dir / "best.yaml"
        _write_best_config(best_config, base, best, study, metric)
    _write_atomically(
        study_dir / "summary.md", _summary_text(study, space, base, rows, best, importances, importance_note)
    )
    return best_config


def _importances(study: Any) -> tuple[dict[str, float], str]:
    import optuna

    finished = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(finished) < 2:
        return {}, "Parameter importance needs at least two finished trials."
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        return dict(optuna.importance.get_param_importances(study, evaluator=evaluator)), ""
    except (RuntimeError, ValueError) as exc:  # e.g. every finished trial has the same values
        return {}, f"Parameter importance could not be computed: {exc}"


def _plot_importances(importances: dict[str, float], path: Path, metric: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(importances)[::-1]
    figure, axes = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    axes.barh(names, [importances[n] for n in names], color="#4c72b0")
    axes.set_xlabel(f"importance for val {metric} (fANOVA)")
    axes.set_xlim(0, 1)
    figure.tight_layout()
    staging = path.with_suffix(".tmp.png")
    figure.savefig(staging, dpi=110)
    plt.close(figure)
    os.replace(staging, path)


def _write_best_config(path: Path, base: RunConfig, best: Any, study: Any, metric: str) -> None:
    values = {**best.params, "train.early_stopping_metric": metric}
    config = base.model_copy(deep=True)
    tree = config.model_dump(mode="json", exclude={"distributed"})
    for dotted, value in values.items():
        node = tree
        *sections, field = dotted.split(".")
        for section in sections:
            node = node[section]
        node[field] = value
    RunConfig.model_validate(tree)  # the search checked every value; this checks the combination
    tree["run_name"] = None
    header = (
        f"# the best trial of study {study.study_name!r}: trial {best.number}, val {metric} {best.value:.6g}\n"
        f"# its run: {best.user_attrs.get('run_dir', '?')}\n"
        f"# train it in full: imgcls train --config {path}\n"
    )
    _write_atomically(path, header + yaml.safe_dump(tree, sort_keys=False))


def _summary_text(
    study: Any,
    space: SearchSpace,
    base: RunConfig,
    rows: list[dict],
    best: Any,
    importances: dict[str, float],
    importance_note: str,
) -> str:
    metric = space.objective_metric(base)
    states = Counter(row["state"] for row in rows)
    lines = [
        f"# Study {study.study_name}",
        "",
        f"- objective: val {metric}, {'lower' if space.direction(base) == 'minimize' else 'higher'} is better "
        f"(the test split never steers the search; its accuracy is listed for information)",
        f"- trials: {', '.join(f'{n} {s.lower()}' for s, n in sorted(states.items()))}",
        f"- pruner: {space.pruner}; sampler: TPE",
    ]
    if best is not None:
        params = ", ".join(f"`{k}={_short(v)}`" for k, v in best.params.items())
        lines += [
            f"- **best: trial {best.number}, val {metric} {best.value:.4f}** ({params}); "
            "its full config: `best.yaml` (`imgcls train --config best.yaml`)",
        ]
    lines += ["", "## Parameter importance", ""]
    if importances:
        lines += ["| parameter | importance |", "|---|---|"]
        lines += [f"| `{name}` | {value:.3f} |" for name, value in importances.items()]
        lines += ["", "![parameter importance](importance.png)"]
    else:
        lines.append(importance_note)
    lines += ["", "## Trials, best first", ""]
    direction = 1.0 if space.direction(base) == "minimize" else -1.0
    ordered = sorted(
        rows,
        key=lambda r: (r[f"val_{metric}"] == "", direction * float(r[f"val_{metric}"] or 0), r["trial"]),
    )
    columns = ["trial", "state", f"val_{metric}", "epochs", "test_accuracy", "seconds", *space.params]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_short(row[c]) for c in columns) + " |" for row in ordered]
    return "\n".join(lines) + "\n"


def _csv_text(rows: list[dict]) -> str:
    from io import StringIO

    if not rows:
        return ""
    buffer = StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    """Several workers rewrite the same files: each replaces the file whole, never half-written."""
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)
