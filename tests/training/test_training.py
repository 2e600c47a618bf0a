"""Training: one shift, masked prompt and padding, IRM-only gradients and checkpoints,
falling loss on the real SmolLM2, exact resume after SIGKILL, and 2-process DDP."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import irm
from conftest import write_qa
from irm.data.rows import (
    IGNORE_INDEX,
    LengthGroupedBatches,
    Row,
    collate,
    tokenize_rows,
)
from irm.training.config import TrainConfig
from irm.training.loss import target_loss, token_loss
from irm.training.module import IRMTrainingModule
from irm.training.penalty import output_penalty
from irm.training.run import train

IRM_BIN = str(Path(sys.executable).parent / "irm")


def test_labels_shift_once_and_mask_question_and_padding(tiny_llama):
    tok = tiny_llama.tokenizer
    rows = [Row(line=1, question="Q?", answer="ab"), Row(line=2, question="Longer question?", answer="xyz")]
    examples, report = tokenize_rows(rows, tok, max_length=64, loss_on="answer")
    prompt = tok("Question: Q?\nAnswer:", add_special_tokens=False)["input_ids"]
    answer = tok(" ab", add_special_tokens=False)["input_ids"]
    first = examples[0]
    assert first.input_ids == [tok.bos_token_id] + prompt + answer + [tok.eos_token_id]
    n_prompt = 1 + len(prompt)
    assert first.labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert first.labels[n_prompt:] == answer + [tok.eos_token_id]
    batch = collate(examples, pad_id=tok.pad_token_id)
    short = len(first.input_ids)
    assert batch["input_ids"].shape[1] == len(examples[1].input_ids)  # padded to the longest row only
    assert (batch["labels"][0, short:] == IGNORE_INDEX).all() and (batch["attention_mask"][0, short:] == 0).all()

    # Logits that put all mass on the true *next* token give zero loss: position t predicts t+1.
    vocab = 300
    ids, labels = batch["input_ids"], batch["labels"]
    logits = torch.full((*ids.shape, vocab), -1e4)
    for b in range(ids.shape[0]):
        for t in range(ids.shape[1] - 1):
            logits[b, t, ids[b, t + 1]] = 0.0
    nll, count = token_loss(logits, labels)
    assert nll.item() == pytest.approx(0.0, abs=1e-3)
    assert count.item() == sum(sum(1 for x in e.labels[1:] if x != IGNORE_INDEX) for e in examples)
    # Shifting twice (the published defect) would be wrong on every target:
    shifted_twice = torch.cat([logits[:, 1:], logits[:, :1]], dim=1)
    assert token_loss(shifted_twice, labels)[0].item() > 100
    # Changing a prompt position's or padding's logits never changes the loss.
    logits2 = logits.clone()
    logits2[0, : n_prompt - 1] = torch.randn(n_prompt - 1, vocab)
    logits2[0, short:] = torch.randn(ids.shape[1] - short, vocab)
    assert token_loss(logits2, labels)[0].item() == pytest.approx(nll.item(), abs=1e-3)


@pytest.mark.parametrize("name", ["tiny-random-llama", "tiny-random-gpt2", "tiny-random-gemma3", "tiny-random-gpt-neox"])
def test_target_loss_equals_loss_on_full_logits(name):
    host = irm.load_host(name, device="cpu")
    rows = [Row(line=1, question="Q?", answer="a longer answer"), Row(line=2, question="Another question?", answer="b")]
    batch = collate(tokenize_rows(rows, host.tokenizer, max_length=64)[0], host.tokenizer.pad_token_id)
    with torch.no_grad():
        full = token_loss(host.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits, batch["labels"])
        part = target_loss(host.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    assert part[1] == full[1]
    assert part[0].item() == pytest.approx(full[0].item(), rel=1e-5)


def test_loss_on_all_tokens_and_truncation_report(tiny_llama):
    rows = [Row(line=1, question="Q?", answer="x" * 100)]
    examples, report = tokenize_rows(rows, tiny_llama.tokenizer, max_length=32, loss_on="all")
    assert report.truncated == 1 and len(examples[0].input_ids) == 32
    assert IGNORE_INDEX not in examples[0].labels


def test_penalty_is_a_per_element_mean():
    delta = torch.ones(2, 5, 8, 3)
    mask = torch.ones(2, 5)
    assert output_penalty(delta, mask, "l1").item() == pytest.approx(1.0)
    mask[:, 3:] = 0  # padding does not count
    assert output_penalty(torch.cat([delta], 0) * 2, mask, "l2").item() == pytest.approx(4.0)
    assert output_penalty(torch.ones(8, 50, 8, 3), torch.ones(8, 50), "l1").item() == pytest.approx(1.0)


def test_batches_are_deterministic_cover_rows_and_split_across_ranks():
    lengths = [(i * 37) % 101 + 1 for i in range(64)]
    one = LengthGroupedBatches(lengths, 8, seed=1)
    assert [b for b in one] == [b for b in LengthGroupedBatches(lengths, 8, seed=1)]
    assert sorted(i for b in one for i in b) == list(range(64))
    ranks = [LengthGroupedBatches(lengths, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    for full, a, b in zip(one, *ranks):
        assert sorted(full) == sorted(a + b)
    one.set_epoch(1)
    assert [b for b in one] != [b for b in LengthGroupedBatches(lengths, 8, seed=1)]
    one.skip = 3
    assert len(list(one)) == len(one) - 3


def test_gradients_reach_only_the_irm(tiny_llama, tmp_path):
    config = TrainConfig(host="tiny-random-llama", data="unused", batch_size=2)
    net = irm.IRM.for_host(tiny_llama, "all", output_init="default", seed=0)
    examples, _ = tokenize_rows(
        [Row(line=1, question="a?", answer="bcd"), Row(line=2, question="e?", answer="fgh")], tiny_llama.tokenizer, max_length=64
    )
    module = IRMTrainingModule(tiny_llama.model, net, config, examples, [], [], tiny_llama.tokenizer.pad_token_id)
    batch = collate(examples, tiny_llama.tokenizer.pad_token_id)
    nll, count, _ = module._loss(batch)
    (nll / count).backward()
    module.teardown("fit")
    assert all(p.grad is None for p in tiny_llama.model.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert set(module.state_dict()) == {f"irm.{k}" for k in net.state_dict()}
    module.train()
    assert not tiny_llama.model.training


def _run(args, **kw):
    return subprocess.run([IRM_BIN, *args], capture_output=True, text=True, timeout=600, **kw)


def _train_args(data, out, *extra):
    return ["train", "--host", "tiny-random-llama", "--data", str(data), "--out", str(out), "--no-progress", "--json", *extra]


def _weights(run: Path):
    return load_file(str(run / "irm" / "model.safetensors"))


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_irm(tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", n=96)
    common = ["--max-steps", "150", "--batch-size", "4", "--checkpoint-every", "7", "--lr", "1e-3", "--seed", "3"]
    reference = _run(_train_args(data, tmp_path / "ref", *common))
    assert reference.returncode == 0, reference.stderr[-2000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([IRM_BIN, *_train_args(data, run, *common)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = run / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.4)  # mid-run, at an arbitrary moment after the first checkpoint
    assert proc.poll() is None, "training finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "irm").exists()
    from irm.training.rundir import RunDir

    before = {f: f.read_bytes() for f in RunDir(run).metrics_files()}
    saved_step = torch.load(ckpt, weights_only=True)["global_step"]
    assert 0 < saved_step < 150
    resumed = _run(["train", "--resume", str(run), "--no-progress", "--json"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout)["global_step"] == 150
    ref, got = _weights(tmp_path / "ref"), _weights(run)
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    assert not list(run.glob("checkpoints/*.tmp"))
    files = RunDir(run).metrics_files()  # the metrics logged before the kill are kept
    assert files[-1].parent.name == "csv-resumed-1"
    assert all(before[f] == f.read_bytes()[: len(before[f])] for f in before)


def _step_losses(run: Path) -> dict[int, float]:
    out = {}
    with open(run / "logs" / "csv" / "metrics.csv") as fh:
        for row in csv.DictReader(fh):
            if row.get("train_loss_step"):
                out[int(row["step"])] = float(row["train_loss_step"])
    return out


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", n=80)
    common = ["--max-steps", "12", "--lr", "1e-3", "--log-every", "1"]
    single = _run(_train_args(data, tmp_path / "single", *common, "--batch-size", "8"))
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = _run(_train_args(data, tmp_path / "ddp", *common, "--batch-size", "4", "--devices", "2", "--strategy", "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert len(summary["rank_checksums"]) == 2 and summary["ranks_identical"]
    a, b = _step_losses(tmp_path / "single"), _step_losses(tmp_path / "ddp")
    assert a.keys() == b.keys() and len(a) >= 1
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-4, abs=1e-5)
    wa, wb = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5), key


@pytest.mark.slow
def test_smollm2_training_loss_falls(tmp_path, smollm2):
    data = write_qa(tmp_path / "qa.jsonl", n=120)
    config = TrainConfig(
        host="smollm2-135m-instruct",
        data=str(data),
        out=str(tmp_path / "run"),
        layers="0-7",
        max_steps=30,
        batch_size=4,
        lr=3e-4,
        checkpoint_every=100,
        log_every=1,
    )
    from irm.training.run import train

    result = train(config, progress=False)
    losses = _step_losses(result.run_dir)
    steps = sorted(losses)
    early = sum(losses[s] for s in steps[:5]) / 5
    late = sum(losses[s] for s in steps[-5:]) / 5
    assert late < early - 0.3, (early, late)
    assert (result.irm_dir / "model.safetensors").is_file()
    ckpt = torch.load(result.run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert all(k.startswith("irm.") for k in ckpt["state_dict"])
    assert "optimizer_states" in ckpt and "lr_schedulers" in ckpt
    back = irm.IRM.from_pretrained(result.irm_dir, smollm2)
    assert back.config.layers == list(range(8))


def test_gradient_checkpointing_gives_the_same_gradients(tiny_llama):
    from irm.training.engine import set_activation_checkpointing

    rows = [Row(line=1, question="a?", answer="bcd efg"), Row(line=2, question="e?", answer="fgh ijk lmn")]
    batch = collate(tokenize_rows(rows, tiny_llama.tokenizer, max_length=64)[0], tiny_llama.tokenizer.pad_token_id)
    grads = []
    for checkpointing in (False, True):
        net = irm.IRM.for_host(tiny_llama, "all", output_init="default", seed=0)
        set_activation_checkpointing(tiny_llama.model, checkpointing)
        recomputed = []
        mlp = tiny_llama.spec.layers(tiny_llama.model)[2].mlp  # inside the checkpointed forward
        hook = mlp.register_forward_pre_hook(lambda *a, seen=recomputed: seen.append(1))
        with irm.attach(tiny_llama, net):  # hooks stay attached through backward (recomputation)
            nll, count = target_loss(tiny_llama.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
            (nll / count).backward()
        hook.remove()
        assert len(recomputed) == (2 if checkpointing else 1)  # forward, then recomputed in backward
        grads.append([p.grad.clone() for p in net.parameters()])
    set_activation_checkpointing(tiny_llama.model, False)
    assert not irm.core.attach.activation_checkpointing_on(tiny_llama.model)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6)


def test_chunked_frozen_head_loss_equals_cross_entropy():
    from irm.training.loss import FrozenHeadCrossEntropy

    torch.manual_seed(0)
    hidden = torch.randn(600, 32, requires_grad=True)  # more rows than one chunk
    weight = torch.randn(1000, 32)
    target = torch.randint(0, 1000, (600,))
    ref = torch.nn.functional.cross_entropy(hidden @ weight.t(), target, reduction="sum")
    (ref_grad,) = torch.autograd.grad(ref * 0.5, hidden)
    got = FrozenHeadCrossEntropy.apply(hidden, weight, target)
    (got_grad,) = torch.autograd.grad(got * 0.5, hidden)
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert torch.allclose(got_grad, ref_grad, atol=1e-5)
    with torch.no_grad():
        assert FrozenHeadCrossEntropy.apply(hidden, weight, target).item() == pytest.approx(ref.item(), rel=1e-5)


def test_compiled_training_gives_the_same_irm(tmp_path):
    """--compile traces the IRM's hooks into the compiled decoder layers; with a backend that
    does not reorder arithmetic the trained IRM is bit-identical (inductor's fused kernels
    round differently, so there only a tolerance would hold)."""
    from torch._dynamo.utils import counters

    data = write_qa(tmp_path / "qa.jsonl", n=24)
    weights = []
    counters.clear()
    for compiled in (False, True):
        out = tmp_path / f"run-{compiled}"
        config = TrainConfig(
            host="tiny-random-llama",
            data=str(data),
            out=str(out),
            max_steps=3,
            batch_size=4,
            lr=1e-3,
            compile=compiled,
            compile_backend="aot_eager",
            output_init="default",
        )
        train(config, progress=False)
        weights.append(_weights(out))
    assert counters["stats"]["unique_graphs"] >= 2 and not counters["graph_break"]  # layers and IRM, hooks traced inside
    assert weights[0].keys() == weights[1].keys()  # compiling in place keeps the parameter names
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_warmup_ramps_the_learning_rate_then_epochs_decay_it(tmp_path):
    data = write_qa(tmp_path / "qa.jsonl", n=40)
    out = tmp_path / "run"
    config = TrainConfig(
        host="tiny-random-llama",
        data=str(data),
        out=str(out),
        batch_size=8,
        lr=1e-3,
        warmup_steps=4,
        gamma=0.5,
        epochs=3,
        val_fraction=0.0,
        test_fraction=0.0,
        log_every=1,
    )
    train(config, progress=False)
    with open(next(out.glob("logs/csv*/metrics.csv"))) as fh:
        lrs = {int(r["step"]): float(r["lr-Adam"]) for r in csv.DictReader(fh) if r.get("lr-Adam")}
    # 40 rows / batch 8 = 5 steps per epoch; warm-up over steps 0-3, halved after each epoch
    expected = [1e-3 * w * 0.5 ** (s // 5) for s, w in enumerate([0.25, 0.5, 0.75] + [1.0] * 12)]
    assert [lrs[s] for s in sorted(lrs)] == pytest.approx(expected, rel=1e-6)


def test_the_loss_imports_without_lightning():
    """Analysis code and benchmarks take the loss alone: importing it must not load Lightning."""
    import subprocess

    code = "import sys, irm.training.loss, irm.analysis.gradients; print(sorted(m for m in sys.modules if m.startswith('lightning')))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_training_console_is_one_bar_and_leaves_the_callers_settings_alone(tmp_path, capfd):
    """One progress bar for the training steps (to max_steps, not to the end of the epoch),
    without Lightning's logger version or bars for the validation and test passes; the
    caller's warning filters and Lightning's log level are as they were."""
    import logging
    import warnings

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    logger.setLevel(logging.DEBUG)
    before = list(warnings.filters)
    try:
        data = write_qa(tmp_path / "qa.jsonl", n=40)
        config = TrainConfig(
            host="tiny-random-llama", data=str(data), out=str(tmp_path / "run"), batch_size=4, max_steps=2, max_length=64, val_every=1
        )
        result = train(config, progress=True)
        assert result.summary["global_step"] == 2
        assert warnings.filters == before
        assert logger.level == logging.DEBUG
    finally:
        logger.setLevel(logging.NOTSET)
    captured = capfd.readouterr()
    err = captured.out + captured.err  # Lightning's bar writes to stdout
    assert "2/2 [" in err and "train_loss" in err  # the bar runs to max_steps and shows the loss
    assert "v_num" not in err and "Validation" not in err and "Testing" not in err and "Warning" not in err


def test_sigterm_in_the_last_batch_of_an_epoch_resumes_to_the_same_irm(tmp_path):
    """A SIGTERM that lands while an epoch's last batch runs: Lightning would restore a
    checkpoint taken right after that batch as a finished epoch (one epoch ahead, so other
    batches); the run keeps the previous checkpoint instead, and the resume is exact."""
    import lightning.pytorch as pl

    data = write_qa(tmp_path / "qa.jsonl", n=48)

    def config(out: str) -> TrainConfig:
        return TrainConfig(
            host="tiny-random-llama", data=str(data), out=out, max_steps=24, batch_size=4, checkpoint_every=3, lr=1e-3, seed=3
        )

    class TermInLastBatch(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 0 and batch_idx == trainer.num_training_batches - 1:
                os.kill(os.getpid(), signal.SIGTERM)

    reference = train(config(str(tmp_path / "ref")), progress=False)
    with pytest.raises(irm.IRMError, match="stopped by SIGTERM"):
        train(config(str(tmp_path / "run")), progress=False, callbacks=[TermInLastBatch()])
    saved = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert saved % 3 == 0 and saved < 10  # the last periodic checkpoint, not one after the last batch
    resumed = train(config(str(tmp_path / "run")), progress=False, resume=tmp_path / "run")
    ref, got = _weights(reference.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
