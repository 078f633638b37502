"""The layout of a run directory (``runs/<run-name>/``), named in one place.

``imgcls train`` writes it, ``--resume`` and ``imgcls export`` read it.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

from imgcls.errors import ConfigError
from trainer.config import RESUMABLE_FIELDS, RunConfig, check_resume_overrides, load_config
from trainer.splits import Splits, read_split_file

__all__ = ["RunDir", "git_sha"]


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"  # the resolved config, plus the git SHA as a comment

    @property
    def labels(self) -> Path:
        return self.path / "labels.json"

    @property
    def split(self) -> Path:
        return self.path / "split.csv"

    @property
    def data_report(self) -> Path:
        return self.path / "data_report.json"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def metrics_json(self) -> Path:
        return self.path / "metrics.json"

    @property
    def per_class_csv(self) -> Path:
        return self.path / "per_class.csv"

    @property
    def curves_png(self) -> Path:
        return self.path / "curves.png"

    @property
    def confusion_png(self) -> Path:
        return self.path / "confusion_matrix.png"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def best_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    def write_config(self, config: RunConfig, sha: str | None) -> None:
        header = f"# resolved imgcls training config; git {sha or 'unknown'}\n"
        body = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        self.config.write_text(header + body, encoding="utf-8")

    def read_config(self, overrides: list[str] | None = None, values: dict | None = None) -> RunConfig:
        if not self.config.is_file():
            raise ConfigError(f"{self.path}: not a run directory (no config.yaml); pass a folder under runs/")
        return load_config(self.config, overrides, values)

    def resume_config(self, overrides: list[str] | None = None, values: dict | None = None) -> RunConfig:
        """The run's config with the changes a resume allows (``config.RESUMABLE_FIELDS``), others refused."""
        keys = [item.partition("=")[0].strip() for item in overrides or []] + list(values or {})
        check_resume_overrides(keys)
        return self.read_config(overrides, values)

    def continuing_config(self, config: RunConfig) -> RunConfig:
        """The run's own config with ``config``'s resumable fields, for a command rerun as it was (a
        restarted pod, ``--resume-if-exists``); another recipe under the same run name is refused."""
        own = self.read_config()
        resumable = RESUMABLE_FIELDS
        ignored = ("run_name", "runs_dir", "distributed.")

        def recipe(tree: RunConfig) -> dict[str, object]:
            flat = _flatten(tree.model_dump(mode="json"))
            return {
                k: v
                for k, v in flat.items()
                if not any(k == f or (f.endswith(".") and k.startswith(f)) for f in (*resumable, *ignored))
            }

        mine, theirs = recipe(own), recipe(config)
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if changed:
            raise ConfigError(
                f"{self.path} was trained with another recipe ({', '.join(changed[:5])} differ); "
                "give this one another --run-name, or continue that run with --resume"
            )
        wanted = _flatten(config.model_dump(mode="json"))
        values = {
            k: v
            for k, v in wanted.items()
            if any(k == f or (f.endswith(".") and k.startswith(f)) for f in resumable)
        }
        return self.read_config(values=values)

    def data_root(self) -> Path:
        """The folder that the paths in ``split.csv`` are relative to."""
        try:
            return Path(json.loads(self.data_report.read_text(encoding="utf-8"))["data_root"])
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"{self.data_report}: cannot read the run's data report ({exc}); is the run complete?"
            ) from None

    def read_splits(self, class_names: list[str]) -> Splits:
        return read_split_file(self.split, class_names, self.data_root())

    def read_labels(self) -> list[str]:
        try:
            return list(json.loads(self.labels.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"{self.labels}: cannot read the run's labels ({exc}); is the run complete?"
            ) from None


def _flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def git_sha() -> str | None:
    """The commit the code runs from, when it runs from a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None
