"""``irm study``: the paper's battery (sweep, recording, stripes, dominant indices, host
outliers, gradients, ablation) on any host in one resumable command.

    from irm.study import StudyConfig, run_study

    result = run_study(StudyConfig(host="tiny-random-llama", out="runs/study-tiny", layers=["all", "0-1"], steps=4))
    result.findings["row"]          # the host's row of the cross-host table
"""

from irm.study.config import StudyConfig, StudyDir
from irm.study.runner import StudyResult, run_study

__all__ = ["StudyConfig", "StudyDir", "StudyResult", "run_study"]
