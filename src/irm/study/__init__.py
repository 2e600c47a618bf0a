"""``irm study``: the paper's battery (sweep, recording, stripes, dominant indices, host
outliers, gradients, ablation) on any host in one resumable command.

    from irm.study import StudyConfig, run_study

    result = run_study(StudyConfig(host="tiny-random-llama", out="runs/study-tiny", layers=["all", "0-1"], steps=4))
    result.findings["row"]          # the host's row of the cross-host table

``run_study`` and ``StudyResult`` are imported on first use, so that the command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from irm.study.config import StudyConfig, StudyDir

if TYPE_CHECKING:
    from irm.study.runner import StudyResult, run_study


def __getattr__(name: str) -> Any:
    if name in ("run_study", "StudyResult"):
        from irm.study import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'irm.study' has no attribute {name!r}")


__all__ = ["StudyConfig", "StudyDir", "StudyResult", "run_study"]
