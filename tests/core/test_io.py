"""Atomic writes keep the permissions of a plain open."""

import pytest
import torch

import irm


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path, tiny_llama, umask):
    """mkstemp makes 0600 files; an IRM saved for collaborators on a shared disk must get the
    mode a plain open() gives under the user's umask, as must checkpoints."""
    import os

    from irm.analysis.recording import record, save_recording
    from irm.training.callbacks import AtomicCheckpointIO

    old = os.umask(umask)
    try:
        (tmp_path / "plain").write_bytes(b"x")
        net = irm.IRM.for_host(tiny_llama, "all")
        net.save_pretrained(tmp_path / "irm")
        AtomicCheckpointIO().save_checkpoint({"step": torch.tensor(1)}, tmp_path / "ckpt" / "last.ckpt")
        save_recording(record(tiny_llama, net, ["Hi"], max_new_tokens=2), tmp_path / "rec")
    finally:
        os.umask(old)
    want = (tmp_path / "plain").stat().st_mode & 0o777
    assert want == 0o666 & ~umask
    for path in (
        tmp_path / "irm" / "model.safetensors",
        tmp_path / "irm" / "irm_config.json",
        tmp_path / "ckpt" / "last.ckpt",
        *(tmp_path / "rec").iterdir(),
    ):
        assert path.stat().st_mode & 0o777 == want, path
