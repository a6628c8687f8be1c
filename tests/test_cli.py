"""The CLI as a newcomer meets it: help on every option, --version, --root either side of the runs subcommand,
argument ranges checked with one-line errors, no placeholder (None, ?) in what it prints, and a demo that owns
its run (Ctrl-C cancels it: no trainer left behind)."""
import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from prefpilot import rundir, runs
from prefpilot.cli import build_parser, main as cli


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = cli(list(argv))
        except SystemExit as exc:
            rc = exc.code
    return rc, out.getvalue(), err.getvalue()


def walk(parser, path=("prefpilot",)):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield path + (name,), None, helps.get(name)
                yield from walk(sub, path + (name,))
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action, action.help


def test_every_option_and_subcommand_has_help():
    missing = []
    for path, action, text in walk(build_parser()):
        if not text:
            missing.append(" ".join(path) + ("" if action is None else f" {action.option_strings or action.dest}"))
    assert missing == [], missing


def test_version():
    from prefpilot import __version__
    rc, out, _ = run_cli("--version")
    assert rc == 0 and out.strip() == f"prefpilot {__version__}"


def test_root_before_or_after_the_runs_subcommand(tmp_path):
    d = tmp_path / "20261123-120000-dpo-m-0123456789abcdef"
    d.mkdir()
    rundir.update_status(d, run_id=d.name, state="completed", created_at=rundir.now())
    for argv in (("runs", "--root", str(tmp_path), "list"), ("runs", "list", "--root", str(tmp_path))):
        rc, out, _ = run_cli(*argv, "--json")
        assert rc == 0 and [r["run_id"] for r in json.loads(out)] == [d.name], argv


@pytest.mark.parametrize("argv", [("demo", "--steps", "0"), ("demo", "--steps", "-3"), ("plan", "--dataset-size", "-5"),
                                  ("plan", "--max-length", "0"), ("validate", "x.yaml", "--bf16-supported", "maybe"),
                                  ("runs", "logs", "x", "--tail", "0"), ("runs", "cancel", "x", "--grace", "-1")])
def test_out_of_range_arguments_are_one_line_errors(argv):
    rc, out, err = run_cli(*argv)
    assert rc == 2 and "Traceback" not in err and ("range" in err or "not" in err), err


def test_no_placeholders_in_outputs(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("method: ppo\nmodel_name_or_path: m\n")
    big = tmp_path / "big.yaml"
    big.write_text("model_name_or_path: meta-llama/Llama-3.1-8B\ndataset_path: builtin:arith-prefs\n")
    for argv in (("validate", str(bad)), ("validate", str(big)), ("plan",), ("explain", "ipo")):
        rc, out, err = run_cli(*argv)
        text = out + err
        assert "None" not in text and " ? " not in text and "NoneType" not in text, (argv, text)


def test_ctrl_c_during_the_demo_cancels_its_run(tmp_path):
    root = tmp_path / "runs"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    # a suite started in the background (`cmd &` in a script) inherits SIGINT ignored: give the demo a terminal's
    # default, as a user pressing Ctrl-C has it
    demo = subprocess.Popen([sys.executable, "-m", "prefpilot.cli", "demo", "--steps", "400", "--runs-root", str(root)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 300
        run_id = None
        while time.time() < deadline:  # wait until its trainer is inside the training loop
            ids = [p.name for p in root.iterdir()] if root.is_dir() else []
            if ids and (rundir.read_status(root / ids[0]).get("step") or 0) >= 1:
                run_id = ids[0]
                break
            time.sleep(0.5)
        assert run_id, "the demo run never started training"
        pid = rundir.read_status(root / run_id)["pid"]
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=180)
    finally:
        if demo.poll() is None:
            demo.kill()
        if run_id:  # a demo killed before its cancel leaves a detached trainer: stop exactly what this test started
            st = rundir.read_status(root / run_id)
            if st.get("pid") and runs.pid_alive(st["pid"]) and st.get("state") not in ("cancelled", "completed"):
                with contextlib.suppress(OSError):
                    os.killpg(st["pid"], signal.SIGKILL)
    assert demo.returncode == 130 and "Traceback" not in err
    assert "demo interrupted" in out and run_id in out
    st = runs.status(run_id, root)
    assert st["state"] == "cancelled" and st["checkpoint"]
    assert not runs.pid_alive(pid), "the trainer is still running"


def test_diagnose_keeps_its_verdict_when_the_reader_leaves_and_names_a_missing_file(tmp_path):
    log = os.path.join(os.path.dirname(__file__), "real_logs", "trl-4023-grad-zero-rewards-zero.txt")
    # `prefpilot diagnose LOG | head` where head is gone before the report is written: still exit 3 (problems)
    p = subprocess.Popen([sys.executable, "-m", "prefpilot.cli", "diagnose", log], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=tmp_path)
    p.stdout.close()
    assert p.wait(timeout=120) == 3 and b"Traceback" not in p.stderr.read()
    # a missing file that looks like a run id is reported as both a missing file and a missing run
    r = subprocess.run([sys.executable, "-m", "prefpilot.cli", "diagnose", "metrics.jsonl"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2 and "no such file or directory" in r.stderr and "no run 'metrics.jsonl'" in r.stderr


def test_a_healthy_report_offers_options_not_fixes(capsys):
    from prefpilot.cli import main as cli
    log = os.path.join(os.path.dirname(__file__), "real_logs", "nb-nerusskikh-llama3-70b-dpo-nl2fol.ipynb")
    assert cli(["diagnose", log]) == 0  # healthy, with likelihood_displacement noted (info)
    out = capsys.readouterr().out
    assert "[info] likelihood_displacement" in out and "  option: " in out and "  fix: " not in out


def test_plan_and_parser_messages_name_the_users_input(tmp_path):
    """A missing dataset is the user's input, not an internal error; a plan without a model size says nothing was
    estimated; a missing subcommand lists the ones to pick from; a schema typo gets a suggestion."""
    def run(*argv):
        r = subprocess.run([sys.executable, "-m", "prefpilot.cli", *argv], capture_output=True, text=True, cwd=tmp_path)
        return r.returncode, r.stdout + r.stderr
    rc, out = run("plan", "--dataset-path", "missing.jsonl")
    assert rc == 1 and "dataset_path: dataset file missing.jsonl does not exist" in out and "internal" not in out
    rc, out = run("plan", "--model", "foo/bar")
    assert rc == 0 and "no memory savers needed" not in out and "nothing was estimated" in out
    rc, out = run("runs")
    assert rc == 2 and "{launch,status,cancel,resume,list,logs}" in out and "runs_cmd" not in out
    rc, out = run()
    assert rc == 2 and "diagnose" in out.splitlines()[-1] and ": cmd" not in out
    rc, out = run("schemas", "show", "dpo", "bta")
    assert rc != 0 and "did you mean beta" in out
