"""Bad input never costs more than a one-line error: alias bombs, huge and deep files, devices and FIFOs,
huge numbers, random bytes. Each test here failed (hung, exhausted memory or printed a traceback) before."""
import contextlib
import io
import os
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from prefpilot.cli import main as cli

BOMB = "\n".join([
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
    *[f"{x}: &{x} [{','.join([f'*{p}'] * 9)}]" for p, x in zip("abcdefg", "bcdefgh")],
    "learning_rate: *h"])


def run_cli(*argv):
    """The real CLI in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli(list(argv))
        except SystemExit as exc:  # argparse
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def test_yaml_alias_bomb_is_refused_at_once(tmp_path):
    f = tmp_path / "bomb.yaml"
    f.write_text(BOMB)
    assert len(BOMB) < 600
    t0 = time.perf_counter()
    rc, out, err = run_cli("validate", str(f))
    assert rc == 2 and "aliases" in (out + err) and time.perf_counter() - t0 < 2
    assert len(out + err) < 500  # the message does not carry the expanded value


def test_config_size_and_depth_are_bounded(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("model_name_or_path: m\n" + "#" * (2 << 20) + "\n")
    rc, out, err = run_cli("validate", str(big))
    assert rc == 2 and "at most" in out + err
    for name, text in (("deep.yaml", "a: " + "[" * 50000), ("deep.json", "{\"a\": " + "[" * 50000),
                       ("nested.yaml", "a: " + "[" * 30 + "]" * 30)):
        f = tmp_path / name
        f.write_text(text)
        rc, out, err = run_cli("validate", str(f))
        assert rc == 2 and "Traceback" not in err, (name, out, err)


def test_validation_messages_do_not_embed_huge_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model_name_or_path: m\ndataset_path: builtin:arith-prefs\nbeta: '" + "9" * 200000 + "'\n")
    rc, out, err = run_cli("validate", str(f))
    assert rc == 1 and len(out + err) < 3000


def test_diagnose_refuses_devices_fifos_and_oversize_logs(tmp_path):
    rc, _, err = run_cli("diagnose", "/dev/zero")
    assert rc == 2 and "not a regular file" in err
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    box = {}
    t = threading.Thread(target=lambda: box.update(r=run_cli("diagnose", str(fifo))), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and box["r"][0] == 2  # never blocks on a FIFO
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "loss": 0.69}\n' * 100)
    rc, _, err = run_cli("diagnose", str(log), "--max-bytes", "1000")
    assert rc == 2 and "limit" in err and "--max-bytes" in err
    assert run_cli("diagnose", str(log))[0] in (3, 4)  # under the default limit it is read


def test_plot_into_a_missing_folder_is_refused(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "loss": 0.69, "grad_norm": 0.0}\n')
    rc, _, err = run_cli("diagnose", str(log), "--plot", str(tmp_path / "no" / "such" / "p.png"))
    assert rc == 2 and "does not exist" in err and not (tmp_path / "no").exists()


def test_unwritable_output_is_one_line(tmp_path):
    rc, _, err = run_cli("plan", "-o", str(tmp_path / "missing" / "dir" / "c.yaml"))
    assert rc in (1, 2) and err.count("\n") == 1 and "Traceback" not in err


def test_output_into_a_closed_pipe_is_quiet():
    p = subprocess.run(f"{sys.executable} -m prefpilot.cli skills list | head -c 1", shell=True,
                       capture_output=True, text=True, timeout=60)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr


NUMBERS = st.one_of(st.integers(min_value=-10**30, max_value=10**30).map(str),
                    st.sampled_from(["1e308", "-0", "nan", "inf", "1e-400", "0x10", "", " ", "9" * 400]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000), cmd=st.sampled_from(["validate", "diagnose"]))
def test_random_bytes_are_one_line_errors(tmp_path, data, cmd):
    f = tmp_path / "input.yaml"
    f.write_bytes(data)
    t0 = time.perf_counter()
    rc, out, err = run_cli(cmd, str(f))
    assert rc in (0, 1, 2, 3, 4) and "Traceback" not in out + err
    if rc == 2:
        assert err.strip().count("\n") == 0 or out, err
    assert time.perf_counter() - t0 < 10


@settings(max_examples=40, deadline=None)
@given(size=NUMBERS, length=NUMBERS)
def test_plan_with_odd_numbers_is_one_line(size, length):
    rc, out, err = run_cli("plan", "--dataset-size", size, "--max-length", length)
    assert rc in (0, 1, 2) and "Traceback" not in out + err


def test_huge_steps_and_mixed_formats(tmp_path):
    big = tmp_path / "big.jsonl"
    big.write_text('{"step": 1e308, "loss": 0.69, "grad_norm": 1.0}\n')
    rc, out, _ = run_cli("diagnose", str(big))
    assert rc == 4 and len(out.splitlines()[0]) < 200  # not a 309-digit step count
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("{'loss': 0.69, 'rewards/margins': 0.1}\nloss=nan rewards/margins=0.2 step=2\n"
                     "{'loss': 0.68, 'rewards/margins': 0.12}\n")
    rc, out, _ = run_cli("diagnose", str(mixed))
    assert rc == 3 and "nan_loss" in out
