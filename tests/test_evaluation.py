"""`prefpilot eval` (issue 23): the trained model judged on held-out pairs and its own generations, beside its
reference. Real runs (a tiny model trained by the real DPOTrainer; SmolLM2 made to degenerate), the CLI in a
subprocess, the MCP tool through the SDK client, and accuracies checked against a computation written here."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from prefpilot.evaluation.metrics import accuracy, accuracy_se, generation_summary, has_loop, preference_summary
from prefpilot.train.data import holdout_split, read_rows
from prefpilot.data import builtin_files
from test_mcp import call, session, text
from tiny_model import build_tiny_model

CLI = [sys.executable, "-m", "prefpilot.cli"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
RUN_ID = "20261203-120000-dpo-tiny-0a1b2c"


# ------------------------------------------------------------------ pure parts
def test_loops_are_runs_of_a_repeated_block_not_any_repeat():
    assert has_loop([5] * 12) and has_loop([1, 2, 3] * 5) and has_loop([9, 8] + [4, 5, 6, 7] * 3 + [1])
    assert not has_loop([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14])
    assert not has_loop([7, 7, 7, 1, 2])              # "ha ha ha": under the span
    assert not has_loop([1, 2, 1, 2, 3, 1, 2, 1, 2, 3])  # repeats, but not back to back long enough
    assert accuracy([(1, 0), (0, 1), (2, 2)]) == 0.5  # a tie is half a success


def test_summaries_from_numbers():
    pol = {"chosen": [-2.0, -9.0], "rejected": [-4.0, -3.0], "chosen_len": [2, 9], "rejected_len": [4, 1]}
    ref = {"chosen": [-3.0, -9.0], "rejected": [-3.0, -3.0], "chosen_len": [2, 9], "rejected_len": [4, 1]}
    s = preference_summary(pol, ref, beta=0.1)
    assert s["summed"]["accuracy"] == 0.5 and s["per_token"]["accuracy"] == 0.75  # pair 1 ties per token
    assert s["implicit"]["accuracy"] == 0.75  # pair 1: +0.2 right, pair 2: 0.0, a tie
    assert preference_summary(ref, ref, beta=0.1)["implicit"]["accuracy"] == 0.5
    g = generation_summary([{"tokens": [1] * 48, "eos": False, "text": "a" * 48},
                            {"tokens": [], "eos": True, "text": ""}], max_new_tokens=48)
    assert g["cap_without_eos_rate"] == 0.5 and g["empty_rate"] == 0.5 and g["repetition_rate"] == 0.5


def test_accuracy_error_shrinks_with_pairs_and_is_never_zero():
    assert accuracy_se(0.5, 20) == pytest.approx(0.102, abs=1e-3)
    assert accuracy_se(0.5, 80) == pytest.approx(accuracy_se(0.5, 20) / 2, rel=0.1)
    assert 0.03 < accuracy_se(1.0, 20) < accuracy_se(0.5, 20)  # 20 of 20 is not certainty


def test_holdout_is_deterministic_and_never_the_whole_set():
    rows = [{"i": i} for i in range(400)]
    train, held = holdout_split(rows, "auto", seed=7)
    assert len(held) == 20 and len(train) == 380 and not {r["i"] for r in held} & {r["i"] for r in train}
    assert holdout_split(rows, "auto", seed=7)[1] == held and holdout_split(rows[:100], "auto")[1] == []
    assert len(holdout_split(rows, 0.1)[1]) == 40 and holdout_split(rows, False)[1] == []


# ------------------------------------------------------------------ a real tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny model trained by DPOTrainer on 240 local pairs (no test split: 12 are set aside), with checkpoints."""
    base = tmp_path_factory.mktemp("eval")
    model = build_tiny_model(base / "ws" / "model")
    rows = read_rows(str(builtin_files("arith-prefs")["train"]))[:240]
    data = base / "ws" / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = base / "ws" / "run.yaml"
    cfg.write_text(yaml.safe_dump({"model_name_or_path": str(model), "dataset_path": str(data), "max_steps": 8,
                                   "save_steps": 4, "per_device_train_batch_size": 4, "max_length": 64,
                                   "learning_rate": 2e-3, "beta": 0.1, "report_to": "none"}))
    run_dir = base / "ws" / "runs" / RUN_ID
    r = subprocess.run([*CLI, "train", str(cfg), "--run-dir", str(run_dir)], capture_output=True, text=True,
                       timeout=600, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    return base / "ws", run_dir, model


def test_a_run_without_a_test_split_sets_pairs_aside_and_never_trains_on_them(tiny_run):
    _, run_dir, _ = tiny_run
    held = read_rows(str(run_dir / "eval" / "holdout.jsonl"))
    status = json.loads((run_dir / "status.json").read_text())
    assert len(held) == 12 and status["data"]["held_out"] == 12 and status["data"]["trained"] == 228


def _independent_logps(model, tok, rows):
    """Summed completion log-probs, one sequence at a time: the prompt, then the prompt with its completion
    and EOS tokenized together, the completion being what follows their common prefix (TRL 1.x's rule)."""
    import torch
    out = []
    for r in rows:
        pair = []
        for key in ("chosen", "rejected"):
            p = tok(r["prompt"])["input_ids"]
            full = tok(r["prompt"] + r[key] + tok.eos_token)["input_ids"]
            start = next((i for i, (a, b) in enumerate(zip(p, full)) if a != b), min(len(p), len(full)))
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([full])).logits[0].float()
            lp = torch.log_softmax(logits[:-1], -1)
            pair.append((sum(lp[i - 1, full[i]].item() for i in range(start, len(full))), len(full) - start))
        out.append(pair)
    return out


@pytest.mark.slow
def test_eval_cli_reports_what_an_independent_computation_gives(tiny_run):
    ws, run_dir, model_dir = tiny_run
    r = subprocess.run([*CLI, "eval", str(run_dir), "--json", "--checkpoints", "all", "--prompts", "4"],
                       capture_output=True, text=True, timeout=600, env=ENV)
    assert r.returncode in (0, 3), r.stderr[-2000:]
    rep = json.loads(r.stdout)
    assert set(rep["preference_accuracy"]) == {"summed", "per_token", "implicit"}
    assert set(rep["generation"]) >= {"length_ratio", "cap_without_eos_rate", "repetition_rate", "empty_rate",
                                      "kl_per_token"}
    assert rep["pairs"] == 12 and "set aside at launch" in rep["pairs_source"]
    assert rep["preference_accuracy_se"]["summed"] == pytest.approx(
        accuracy_se(rep["preference_accuracy"]["summed"], 12), abs=1e-4)
    assert [c["name"] for c in rep["checkpoints"]] == ["checkpoint-4", "final"]  # checkpoint-8 is the final model
    assert rep["best_checkpoint"]["name"] in ("checkpoint-4", "final") and rep["best_checkpoint"]["reason"]
    assert json.loads((run_dir / "status.json").read_text())["best_checkpoint"] == rep["best_checkpoint"]
    assert len((run_dir / "eval" / "samples.jsonl").read_text().splitlines()) == 4
    # the same numbers, computed here one pair at a time
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(run_dir / "final")
    held = read_rows(str(run_dir / "eval" / "holdout.jsonl"))
    pol = _independent_logps(AutoModelForCausalLM.from_pretrained(run_dir / "final", dtype=torch.float32), tok, held)
    ref = _independent_logps(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), tok, held)
    summed = accuracy((c[0], r_[0]) for c, r_ in pol)
    per_token = accuracy((c[0] / c[1], r_[0] / r_[1]) for c, r_ in pol)
    implicit = accuracy((0.1 * ((pc[0] - rc[0]) - (pr[0] - rr[0])), 0.0) for (pc, pr), (rc, rr) in zip(pol, ref))
    assert rep["preference_accuracy"] == pytest.approx({"summed": summed, "per_token": per_token,
                                                         "implicit": implicit})
    margin = sum(c[0] - r_[0] for c, r_ in pol) / len(pol)
    assert rep["margins"]["summed"]["mean"] == pytest.approx(margin, abs=1e-3)
    # diagnose shows the evaluation beside the curves
    d = subprocess.run([*CLI, "diagnose", str(run_dir), "--json"], capture_output=True, text=True, timeout=120,
                       env=ENV)
    diag = json.loads(d.stdout)
    assert diag["evaluation"]["preference_accuracy"] == rep["preference_accuracy"]
    assert {f["id"] for f in rep["findings"]} <= {f["id"] for f in diag["findings"]}


@pytest.mark.slow
def test_the_reference_side_is_scored_once_per_reference_and_pairs(tiny_run, tmp_path, monkeypatch):
    """A sweep's runs share their reference and held-out pairs: the second evaluation reads the reference's scores
    and completions from the cache, with the same numbers; a changed reference file is a new entry."""
    from prefpilot.evaluation.run import evaluate
    _, run_dir, model_dir = tiny_run
    monkeypatch.setenv("PREFPILOT_CACHE", str(tmp_path / "cache"))
    said = []
    first = evaluate(run_dir, prompts=2, progress=lambda d, t, what: said.append(what))
    assert "reference scored" in said and len(list((tmp_path / "cache" / "eval-reference").iterdir())) == 1
    said.clear()
    again = evaluate(run_dir, prompts=2, progress=lambda d, t, what: said.append(what))
    assert "reference scored (cached)" in said and "reference generated (cached)" in said
    assert again["preference_accuracy"] == first["preference_accuracy"] and again["before"] == first["before"]
    assert again["generation"]["reference"] == first["generation"]["reference"]
    cfg = model_dir / "config.json"
    os.utime(cfg, ns=(cfg.stat().st_atime_ns, cfg.stat().st_mtime_ns + 10**9))  # the reference changed on disk
    said.clear()
    evaluate(run_dir, prompts=2, progress=lambda d, t, what: said.append(what))
    assert "reference scored" in said and len(list((tmp_path / "cache" / "eval-reference").iterdir())) == 2


@pytest.mark.slow
def test_evaluate_run_over_mcp_returns_the_same_report(tiny_run):
    ws, run_dir, _ = tiny_run
    with session(ws) as (portal, client):
        r = call(portal, client, "evaluate_run", {"run_id": RUN_ID, "prompts": 2, "timeout_s": 50})
        assert not r.is_error, text(r)
        rep = r.structured_content
        while rep["state"] == "running":  # a slow machine: call again to keep waiting
            rep = call(portal, client, "evaluate_run", {"run_id": RUN_ID, "prompts": 2, "timeout_s": 50}).structured_content
        assert rep["state"] == "completed" and rep["pairs"] == 12 and rep["prompts"] == 2
        on_disk = json.loads((run_dir / "eval" / "report.json").read_text())
        assert rep["preference_accuracy"] == on_disk["preference_accuracy"]
        assert rep["preference_accuracy_se"] == on_disk["preference_accuracy_se"]
        again = call(portal, client, "evaluate_run", {"run_id": RUN_ID, "prompts": 2}).structured_content
        assert again["note"].startswith("the evaluation of the current model")  # not evaluated twice
        bad = call(portal, client, "evaluate_run", {"run_id": RUN_ID, "pairs": "../outside.jsonl"})
        assert bad.is_error and "outside the workspace" in text(bad)
        assert call(portal, client, "evaluate_run", {"run_id": "nope"}).is_error


def test_eval_of_something_that_is_not_a_run_is_one_line(tmp_path):
    r = subprocess.run([*CLI, "eval", str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "not a run folder" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model_name_or_path": "x", "dataset_path": "d.jsonl"}))
    r = subprocess.run([*CLI, "eval", str(tmp_path / "run")], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 2 and "no held-out pairs" in r.stderr and "--pairs" in r.stderr, r.stderr


# ------------------------------------------------------------------ healthy curves, unhealthy model
@pytest.mark.slow
def test_a_run_taught_to_repeat_has_healthy_curves_and_is_caught_by_the_evaluation(tmp_path):
    """SmolLM2-135M-Instruct, DPO for 16 steps at 1.5e-5 (inside the accepted range) on conversational pairs whose
    chosen answer is the bare answer said eight times over and whose rejected answer is the bare answer once.
    The curves read healthy (loss down, margins up, accuracy 1.0; margin_explosion only noted); the model's
    greedy answers now loop where the reference's never do, which only its generations show."""
    def repeated(rows):
        return [{"prompt": [{"role": "system", "content": "Answer."}, {"role": "user", "content": r["prompt"]}],
                 "chosen": [{"role": "assistant", "content": " ".join([r["chosen"]] * 8)}],
                 "rejected": [{"role": "assistant", "content": r["chosen"]}]} for r in rows]
    files = builtin_files("terse-prefs")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in repeated(read_rows(str(files["train"])))))
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in repeated(read_rows(str(files["test"])))))
    cfg = {"model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "dataset_path": str(tmp_path / "train.jsonl"),
           "max_steps": 16, "per_device_train_batch_size": 8, "learning_rate": 1.5e-5, "beta": 0.1, "max_length": 96,
           "save_strategy": "no", "report_to": "none", "logging_steps": 1, "eval_holdout": False}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run([*CLI, "train", str(tmp_path / "run.yaml"), "--run-dir", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=1200, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    curves = subprocess.run([*CLI, "diagnose", str(tmp_path / "run" / "metrics.jsonl"), "--config",
                             str(tmp_path / "run.yaml"), "--json"], capture_output=True, text=True, timeout=120, env=ENV)
    curve_report = json.loads(curves.stdout)
    assert curve_report["verdict"] == "healthy", curve_report["summary"]
    ev = subprocess.run([*CLI, "eval", str(tmp_path / "run"), "--pairs", str(tmp_path / "test.jsonl"), "--json"],
                        capture_output=True, text=True, timeout=900, env=ENV)
    rep = json.loads(ev.stdout)
    print("generation", {k: v for k, v in rep["generation"].items() if k not in ("policy", "reference")})
    assert rep["preference_accuracy"]["implicit"] == 1.0  # the held-out pairs say the run worked...
    assert ev.returncode == 3 and rep["verdict"] == "problems"  # ...its answers say otherwise
    assert "repetition_loops" in {f["id"] for f in rep["findings"]}, rep["findings"]
    assert rep["generation"]["reference"]["repetition_rate"] == 0.0
    both = json.loads(subprocess.run([*CLI, "diagnose", str(tmp_path / "run"), "--json"], capture_output=True,
                                     text=True, timeout=120, env=ENV).stdout)
    assert both["verdict"] == "problems" and both["summary"].startswith("healthy curves, unhealthy model")


# ------------------------------------------------------------------ the optional vLLM engine
def test_vllm_engine_is_chosen_only_where_it_runs_and_maps_its_outputs(tmp_path, monkeypatch):
    """vLLM needs a GPU, which this machine lacks: a stand-in module records what prefpilot asks of it (greedy,
    the cap, the prompt token ids) and answers as vLLM's RequestOutput does; the mapping to samples is real."""
    import types
    import torch
    from prefpilot.errors import PrefpilotError
    from prefpilot.evaluation import engine
    full = tmp_path / "full"
    full.mkdir()
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{}")
    # without vllm installed: auto is transformers, an explicit vllm is a one-line error saying why
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else object())
    assert engine.pick_engine("auto", full) == "transformers"
    with pytest.raises(PrefpilotError, match="vllm is not installed"):
        engine.pick_engine("vllm", full)
    asked = {}

    class Params:
        def __init__(self, **kw):
            asked["params"] = kw

    class Out:
        def __init__(self, ids, reason):
            self.outputs = [types.SimpleNamespace(token_ids=ids, finish_reason=reason)]

    class LLM:
        def __init__(self, **kw):
            asked["llm"] = kw

        def generate(self, prompts, params, use_tqdm=True):
            asked["prompts"] = prompts
            return [Out([5, 6, 2], "stop"), Out([7, 7, 7, 7], "length")]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=Params))
    monkeypatch.setattr(engine.importlib.util, "find_spec", lambda name, *a: object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    assert engine.pick_engine("auto", full) == "vllm" and engine.pick_engine("auto", lora) == "transformers"
    tok = types.SimpleNamespace(eos_token_id=2, decode=lambda ids, skip_special_tokens=True: " ".join(map(str, ids)))
    got = engine.generate_vllm(full, tok, [[1, 3], [1, 4, 4]], max_new_tokens=4)
    assert asked["params"] == {"temperature": 0.0, "max_tokens": 4}
    assert asked["prompts"] == [{"prompt_token_ids": [1, 3]}, {"prompt_token_ids": [1, 4, 4]}]
    assert asked["llm"]["model"] == str(full)
    assert got == [{"tokens": [5, 6], "eos": True, "text": "5 6"}, {"tokens": [7, 7, 7, 7], "eos": False, "text": "7 7 7 7"}]
    assert generation_summary(got, 4)["cap_without_eos_rate"] == 0.5
