"""The public API of `irm` (issue 14): every name listed there, typed, and `import irm`
does not pull in Lightning."""

import subprocess
import sys

import irm

PUBLIC = [
    "IRM",
    "IRMConfig",
    "attach",
    "Host",
    "load_host",
    "generate",
    "SteeringVector",
    "load_adapter",
    "train",
    "TrainConfig",
    "evaluate",
    "record",
    "IRMError",
    "HostError",
    "DataError",
    "IRMMismatchError",
]


def test_public_names_resolve_to_their_definitions():
    from irm.analysis.recording import record
    from irm.evaluation.evaluate import evaluate
    from irm.training.config import TrainConfig
    from irm.training.run import train

    for name in PUBLIC:
        assert name in irm.__all__ and hasattr(irm, name), name
    assert (irm.train, irm.TrainConfig, irm.evaluate, irm.record) == (train, TrainConfig, evaluate, record)


def test_import_irm_stays_light():
    code = "import sys, irm; print(any(m.split('.')[0] in ('lightning', 'pytorch_lightning') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "False"
