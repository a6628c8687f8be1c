"""Issue 22 (items 9-11, 19): inputs that reached the CLI's last-resort handler ("... this is a bug") or ran
without a bound. Each is driven through the real CLI in a subprocess, or through the pure function an MCP tool
calls; each failed (a traceback, an internal error, a silent acceptance or gigabytes of memory) before the fix."""
import json
import os
import subprocess
import sys
import time

import anyio
import pytest

from prefpilot.config.validate import validate
from prefpilot.errors import PrefpilotError

BASE = "model_name_or_path: HuggingFaceTB/SmolLM2-135M-Instruct\ndataset_path: builtin:arith-prefs\n"
BUG = "this is a bug"


def cli(*argv, cwd=None, timeout=60):
    """`prefpilot ARGV` in a child process: (exit status, stdout, stderr)."""
    env = {**os.environ, "HOME": str(cwd or os.getcwd()), "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([sys.executable, "-m", "prefpilot.cli", *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout, cwd=cwd, env=env)
    return p.returncode, p.stdout, p.stderr


def clean(rc, out, err, *allowed):
    """No traceback and no internal-error answer; the exit status one of ``allowed``."""
    assert "Traceback" not in out + err and BUG not in out + err, (out, err)
    assert rc in allowed, (rc, out, err)
    return out + err


def rows(n=8, loss=lambda i: 0.6, step=lambda i: i):
    return "".join(json.dumps({"step": step(i), "loss": loss(i), "rewards/margins": 0.1 * i,
                               "rewards/chosen": 0.1, "rewards/rejected": 0.0}) + "\n" for i in range(1, n + 1))


# ----------------------------------------------------------------------------- item 9: a CSV field over 128 KiB
def test_diagnose_reads_a_csv_with_a_field_over_128_kib(tmp_path):
    f = tmp_path / "wandb.csv"
    f.write_text("step,loss,rewards/margins,sample\n" + "".join(
        f"{i},0.6{i},0.{i},{'x' * (200_000 if i == 3 else 5)}\n" for i in range(1, 9)))
    text = clean(*cli("diagnose", f, cwd=tmp_path), 0, 3, 4)
    assert "parsed 8 train" in text


def test_an_unreadable_csv_row_is_one_line_naming_the_file_and_line(tmp_path):
    f = tmp_path / "cr.csv"  # a lone carriage return inside a row: csv.Error ("new-line character seen ...")
    f.write_bytes(b"step,loss,rewards/margins\n" + b"".join(b"%d,0.6,0.1\n" % i for i in range(1, 2000))
                  + b"5,0.6\r7,0.1\n")
    rc, out, err = cli("diagnose", f, cwd=tmp_path)
    clean(rc, out, err, 2)
    assert str(f) in err and "line 2001" in err and err.strip().count("\n") == 0, err


# ----------------------------------------------------------------------------- item 10: wrong types, huge numbers
@pytest.mark.parametrize("extra, field", [
    ('hardware: {gpu_memory_gb: "80"}', "hardware.gpu_memory_gb"),
    ("hardware: {gpu_memory_gb: [1]}", "hardware.gpu_memory_gb"),
    ("loss_type: {a: 1}", "loss_type"),
    ("beta: " + "9" * 300, "beta"),
    ("per_device_train_batch_size: " + "9" * 300, "per_device_train_batch_size"),
])
def test_wrong_types_and_huge_integers_in_a_config_are_errors_naming_the_field(tmp_path, extra, field):
    f = tmp_path / "c.yaml"
    f.write_text(BASE + extra + "\n")
    rc, out, err = cli("validate", f, cwd=tmp_path)
    text = clean(rc, out, err, 1)
    assert "INVALID" in text and field in text and len(text) < 3000, text


@pytest.mark.parametrize("name, text", [
    ("loss.jsonl", rows(loss=lambda i: 10 ** 400 if i == 3 else 0.6)),            # OverflowError: int to float
    ("step.jsonl", rows(step=lambda i: 10 ** 400 if i == 3 else i)),
    ("repr.txt", "".join(f"{{'step': {i}, 'loss': {'9' * 400 if i == 3 else 0.6}, 'rewards/margins': 0.1}}\n"
                         for i in range(1, 9))),
    ("iter.txt", "".join(f"Iter {'9' * 5000 if i == 3 else i}: Train loss 0.6, Chosen reward 0.1, Rejected reward 0\n"
                         for i in range(1, 9))),                                    # "Exceeds the limit (4300 digits)"
    ("tqdm.txt", "".join(f" 5%| | {'9' * 5000 if i == 3 else i}/100 [00:01<00:02] loss=0.6 rewards/margins=0.1\n"
                         for i in range(1, 9))),
])
def test_huge_integers_in_a_log_row(tmp_path, name, text):
    f = tmp_path / name
    f.write_text(text)
    out = clean(*cli("diagnose", f, cwd=tmp_path), 0, 3, 4)
    if name == "loss.jsonl":  # a loss past float's range reads as inf: the non-finite finding names it
        assert "nan_loss" in out or "nonfinite" in out, out


def test_a_checkpoint_folder_named_with_a_unicode_digit_is_not_a_checkpoint(tmp_path):
    run = tmp_path / "runs" / "r1"
    for name in ("checkpoint-²", "checkpoint-5", "checkpoint-٣"):  # ² passes str.isdigit() but not int()
        (run / "checkpoints" / name).mkdir(parents=True)
        (run / "checkpoints" / name / "trainer_state.json").write_text(
            json.dumps({"log_history": [{"step": 1, "loss": 0.6, "rewards/margins": 0.1}]}))
    (run / "status.json").write_text(json.dumps({"run_id": "r1", "state": "failed"}))
    rc, out, err = cli("runs", "--root", tmp_path / "runs", "status", "r1", cwd=tmp_path)
    assert "checkpoint-5 " in clean(rc, out, err, 0)
    clean(*cli("runs", "--root", tmp_path / "runs", "list", cwd=tmp_path), 0)
    clean(*cli("diagnose", run, cwd=tmp_path), 3, 4)
    from prefpilot.rundir import last_checkpoint
    assert last_checkpoint(run).name == "checkpoint-5"


@pytest.mark.parametrize("value", ["inf", "nan", "-5", "1e400", "1e15"])
def test_plan_model_params_must_be_a_finite_count(tmp_path, value):
    rc, out, err = cli("plan", f"--model-params={value}", cwd=tmp_path)
    clean(rc, out, err, 2)
    assert "--model-params" in err and err.strip().splitlines()[-1].startswith("prefpilot plan: error")


def test_a_token_file_that_is_not_utf8_is_refused_before_listening(tmp_path):
    tok = tmp_path / "tok"
    tok.write_bytes(b"\xff\xfe\x00garbage-token-1234567890")
    tok.chmod(0o600)  # private, so the encoding is what is refused
    rc, out, err = cli("mcp", "--transport", "streamable-http", "--workspace", tmp_path, "--token-file", tok,
                       cwd=tmp_path, timeout=30)
    clean(rc, out, err, 2)
    assert str(tok) in err and "UTF-8" in err
    tok.write_text("é" * 20)  # UTF-8, but no HTTP client can send it in a header
    rc, out, err = cli("mcp", "--transport", "streamable-http", "--workspace", tmp_path, "--token-file", tok,
                       cwd=tmp_path, timeout=30)
    assert rc == 2 and "ASCII" in clean(rc, out, err, 2)


@pytest.mark.parametrize("pid", [2 ** 63, 2 ** 32])
def test_a_planted_huge_pid_in_status_json_is_not_a_process(tmp_path, pid):
    run = tmp_path / "runs" / "r2"
    run.mkdir(parents=True)
    (run / "status.json").write_text(json.dumps({"run_id": "r2", "state": "running", "pid": pid,
                                                 "pid_started": "1"}))
    root = tmp_path / "runs"
    out = clean(*cli("runs", "--root", root, "cancel", "r2", cwd=tmp_path), 0)
    assert "failed" in out  # the recorded process cannot exist: the run ended without a final state
    clean(*cli("runs", "--root", root, "status", "r2", "--json", cwd=tmp_path), 0)


@pytest.mark.parametrize("kwargs, field", [
    ({"max_length": 0}, "max_length"), ({"max_length": 10 ** 400}, "max_length"),
    ({"gpu_memory_gb": -1}, "gpu_memory_gb"), ({"gpu_memory_gb": 0}, "gpu_memory_gb"),
    ({"gpu_memory_gb": float("inf")}, "gpu_memory_gb"), ({"gpu_memory_gb": "80"}, "gpu_memory_gb"),
    ({"num_gpus": -1}, "num_gpus"), ({"dataset_size": 0}, "dataset_size"),
    ({"model_params": float("nan")}, "model_params"), ({"model_params": 1e400}, "model_params"),
])
def test_plan_bounds_its_numbers_for_every_caller(kwargs, field):
    from prefpilot.plan import plan
    with pytest.raises(PrefpilotError) as e:
        plan(**kwargs)
    assert str(e.value).startswith(field) and e.value.code == "bad_argument" and "internal" not in str(e.value)


def test_the_plan_run_tool_declares_its_bounds(tmp_path):
    """An agent sees the ranges in the tool's schema, and a call outside them is an argument error naming it."""
    from mcp import Client
    from prefpilot.mcp_server import build_server
    from prefpilot.workspace import Workspace
    server = build_server(Workspace.create(tmp_path))

    async def go():
        async with Client(server) as c:
            props = next(t for t in (await c.list_tools()).tools if t.name == "plan_run").input_schema["properties"]
            calls = [await c.call_tool("plan_run", a) for a in ({"max_length": 0}, {"gpu_memory_gb": -1})]
            return props, calls
    props, calls = anyio.run(go)
    assert props["max_length"]["minimum"] == 8 and props["max_length"]["maximum"] >= 1 << 20
    assert any(s.get("exclusiveMinimum") == 0 for s in props["gpu_memory_gb"]["anyOf"])
    for call, name in zip(calls, ("max_length", "gpu_memory_gb")):
        text = call.content[0].text
        assert call.is_error and name in text and "internal" not in text, text


# ----------------------------------------------------------------------------- item 19: values that cannot run
@pytest.mark.parametrize("extra, field, code", [
    ("max_steps: " + "9" * 400, "max_steps", "too_large"),
    ("max_steps: 10000000000", "max_steps", "range"),
    ("dataloader_num_workers: 100000", "dataloader_num_workers", "range"),
    ("per_device_train_batch_size: 1000000", "per_device_train_batch_size", "range"),
    ("num_train_epochs: 1.0e+9", "num_train_epochs", "range"),
    ("max_length: 100000000", "max_length", "range"),
    ("seed: 5000000000", "seed", "range"),
    ("hardware: {gpu_memory_gb: .nan}", "hardware.gpu_memory_gb", "not_finite"),
    ("hardware: {gpu_memory_gb: .inf}", "hardware.gpu_memory_gb", "not_finite"),
    ("hardware: {num_gpus: 10000000}", "hardware.num_gpus", "range"),
    ("loss_weights: [.nan]", "loss_weights", "not_finite"),
    ("model_init_kwargs: {x: " + "9" * 40 + "}", "model_init_kwargs.x", "too_large"),
])
def test_the_validator_refuses_values_no_run_can_use(tmp_path, extra, field, code):
    f = tmp_path / "c.yaml"
    f.write_text(BASE + extra + "\n")
    rc, out, err = cli("validate", f, "--json", cwd=tmp_path)
    clean(rc, out, err, 1)
    report = json.loads(out)
    assert any(e["code"] == code and field in e["message"] for e in report["errors"]), report["errors"]


def test_real_sizes_still_validate():
    """The bounds sit far above real runs: a 70B full fine-tune on 1024 GPUs with long sequences passes them."""
    r = validate({"model_name_or_path": "m", "max_steps": 500_000, "num_train_epochs": 10, "max_length": 131072,
                  "per_device_train_batch_size": 64, "gradient_accumulation_steps": 512, "dataloader_num_workers": 64,
                  "seed": 2 ** 32 - 1, "logging_steps": 0.01, "model_params": 7.06e10,
                  "hardware": {"gpu_memory_gb": 141, "num_gpus": 1024}}, complete=False)
    assert not [e for e in r["errors"] if e["code"] in ("range", "too_large", "not_finite")], r["errors"]


def test_a_config_object_is_capped_like_yaml_text():
    """The MCP validate_config / launch_run tools pass an object to validate(): the 1 MiB cap holds for it too."""
    t0 = time.perf_counter()
    r = validate({"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": "builtin:arith-prefs",
                  "run_name": "x" * 5_000_000})
    assert time.perf_counter() - t0 < 1
    assert not r["valid"] and r["errors"][0]["code"] == "too_large" and r["errors"][0]["path"] == "/run_name"
    assert len(json.dumps(r)) < 2000
    deep = 1
    for _ in range(40):
        deep = [deep]
    r = validate({"model_name_or_path": "m", "model_init_kwargs": {"a": deep}}, complete=False)
    assert not r["valid"] and r["errors"][0]["code"] == "too_deep"
    assert validate({"model_name_or_path": "m", "run_name": "x" * 100_000}, complete=False)["valid"]


def test_diagnose_leaves_out_config_numbers_it_cannot_use(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text(rows())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("beta: " + "9" * 400 + "\nlearning_rate: .inf\n")
    out = clean(*cli("diagnose", log, "--config", cfg, cwd=tmp_path), 0, 3, 4)
    assert "left out" in out and "from inf" not in out


# ----------------------------------------------------------------------------- item 11: memory
def _peak_rss(path, cwd) -> tuple[int, int]:
    """(peak RSS in bytes, exit status) of `prefpilot diagnose path` (the kernel's figure for that one child)."""
    proc = subprocess.Popen([sys.executable, "-m", "prefpilot.cli", "diagnose", str(path), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_maxrss * 1024, proc.returncode
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise AssertionError("diagnose did not finish in 120 s")


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KiB on Linux")
def test_a_one_line_python_repr_log_is_read_without_a_syntax_tree_of_it(tmp_path):
    """{'log_history': [...]} on one line: ast.literal_eval took ~110x its size (2.2 GB for 16 MiB). 2 MiB here:
    the input's share of the peak must stay under 40x (it was ~110x; it is ~12x)."""
    row = {"loss": 0.6931, "grad_norm": 6.2, "learning_rate": 5e-07, "rewards/chosen": 0.1, "rewards/rejected": -0.1,
           "rewards/accuracies": 0.75, "rewards/margins": 0.2, "logps/chosen": -120.5, "logps/rejected": -125.25}
    big, small = tmp_path / "big.txt", tmp_path / "small.txt"
    for f, n in ((big, 10000), (small, 12)):
        f.write_text("{'log_history': [" + ", ".join(repr({**row, "step": i}) for i in range(1, n + 1)) + "]}\n")
    size = big.stat().st_size
    assert size > 2 << 20
    (base, _), (peak, rc) = _peak_rss(small, tmp_path), _peak_rss(big, tmp_path)
    assert peak - base < 40 * size, f"{(peak - base) / size:.1f}x the input"
    assert rc in (0, 3, 4)
    out = clean(*cli("diagnose", big, "--json", cwd=tmp_path), 0, 3, 4)
    assert json.loads(out[:out.rindex("}") + 1])["parsed"]["rows"] == 10000
