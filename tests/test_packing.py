"""Packed pair scoring (issue 23's cost): each pair as [prompt, chosen, rejected] with rejected blind to chosen,
several pairs to a row, must give what scoring (prompt + answer) sequences one by one gives, on real
transformers models; a kind of model that cannot take it is checked once and scored the plain way."""
import json
import random

import pytest

torch = pytest.importorskip("torch")

from prefpilot.evaluation import engine  # noqa: E402
from prefpilot.evaluation.run import default_max_pairs  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    # the packing answers are kept in prefpilot's cache: each test starts without them
    monkeypatch.setenv("PREFPILOT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(engine, "PACKING_CHECKED", {})


def pairs(n, vocab, seed=0):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        def toks(lo, hi):
            return [rnd.randrange(4, vocab) for _ in range(rnd.randint(lo, hi))]
        out.append({"prompt_ids": toks(1, 30), "chosen_ids": toks(1, 25), "rejected_ids": toks(1, 25)})
    out.append({"prompt_ids": [5, 6, 7], "chosen_ids": [], "rejected_ids": [8]})  # an empty answer scores 0
    return out


def worst(a, b):
    assert a["chosen_len"] == b["chosen_len"] and a["rejected_len"] == b["rejected_len"]
    return max(abs(x - y) for k in ("chosen", "rejected") for x, y in zip(a[k], b[k]))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM
    path = build_tiny_model(tmp_path_factory.mktemp("pack") / "model")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize("max_length", [None, 40, 12])
def test_packed_scores_equal_the_plain_ones(llama, max_length, monkeypatch):
    ps = pairs(30, llama.config.vocab_size)
    ps.append({"prompt_ids": list(range(4, 60)), "chosen_ids": [9, 10], "rejected_ids": [11]})  # prompt > 40 and 12
    plain = engine.pair_logps(llama, ps, 0, max_length, packed=False)
    monkeypatch.setattr(engine, "ROW_TOKENS", 48)  # many rows, some pairs longer than a row
    monkeypatch.setattr(engine, "LOGIT_BUDGET", 64 * llama.config.vocab_size)  # several forward passes
    packed = engine.pair_logps(llama, ps, 0, max_length, packed=True)
    assert worst(plain, packed) < 1e-4
    assert packed["chosen_len"][-1] == (2 if max_length is None else 0)  # TRL's keep_start cut leaves nothing
    if max_length == 12:
        assert max(n for k in ("chosen_len", "rejected_len") for n in packed[k]) <= 11


@pytest.mark.parametrize("packed", [True, False])
def test_scoring_gives_each_whole_prompts_greedy_first_token(llama, packed):
    ps = pairs(12, llama.config.vocab_size, seed=3)
    ps.append({"prompt_ids": list(range(4, 60)), "chosen_ids": [9], "rejected_ids": [11]})  # cut at max_length 40
    got = engine.pair_logps(llama, ps, 0, 40, packed=packed)["first"]
    with torch.no_grad():
        want = [int(llama(input_ids=torch.tensor([p["prompt_ids"]])).logits[0, -1].argmax()) for p in ps[:-1]]
    assert got[:-1] == want and got[-1] is None  # a cut prompt's next token is not the scored one's


def test_generation_skips_prompts_whose_first_token_is_eos(llama):
    class Tok:  # the ids-level tokenizer generate needs
        eos_token_id, pad_token_id = 2, 0

        def decode(self, ids, skip_special_tokens=True):
            return " ".join(map(str, ids))
    prompts = [p["prompt_ids"] for p in pairs(5, llama.config.vocab_size, seed=4)][:5]
    plain = engine.generate(llama, Tok(), prompts, 6)
    calls = []
    real = llama.generate
    llama.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or real(**kw)
    try:
        skipped = engine.generate(llama, Tok(), prompts, 6, first=[2, None, 2, 7])
    finally:
        del llama.generate
    assert skipped[0] == skipped[2] == {"tokens": [], "eos": True, "text": ""}
    assert [skipped[i] for i in (1, 3, 4)] == [plain[i] for i in (1, 3, 4)] and calls == [3]


def test_rows_are_filled_evenly_and_hold_every_pair_once(llama, monkeypatch):
    ps = pairs(40, llama.config.vocab_size, seed=3)
    rows = engine._packed_rows(ps, None)
    assert sorted(i for r in rows for i in r) == list(range(len(ps)))
    size = [sum(len(ps[i][k]) for i in r for k in ("prompt_ids", "chosen_ids", "rejected_ids")) for r in rows]
    total = sum(size)
    assert len(rows) == -(-total // engine.ROW_TOKENS) and max(size) - min(size) <= 60  # one pair at most apart


def test_the_check_packs_a_model_that_matches_and_keeps_the_answer(llama, tmp_path):
    assert engine.packing_ok(llama, 0) is True
    kept = json.loads((tmp_path / "cache" / "packing.json").read_text())
    assert list(kept.values()) == [True] and "LlamaForCausalLM" in next(iter(kept))


def test_a_model_that_refuses_the_packed_inputs_is_scored_the_plain_way(llama, tmp_path):
    class NoMasks(torch.nn.Module):
        """A causal LM that takes only a 2D padding mask (as some architectures do): packing must not be used."""
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, **kw):
            if attention_mask is not None and attention_mask.dim() == 4:
                raise ValueError("4D attention masks are not supported")
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kw)

    wrapped = NoMasks(llama)
    ps = pairs(6, llama.config.vocab_size)
    assert engine.packing_ok(wrapped, 0) is False
    assert worst(engine.pair_logps(wrapped, ps, 0, None), engine.pair_logps(llama, ps, 0, None, packed=False)) == 0
    assert False in json.loads((tmp_path / "cache" / "packing.json").read_text()).values()


def test_other_architectures_score_the_same_by_default():
    # whatever the check decides for a kind of model, the default path gives the plain scores
    from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    models = [Qwen2ForCausalLM(Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2)).eval(),
              GPT2LMHeadModel(GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=256)).eval()]
    for m in models:
        ps = pairs(12, 300, seed=5)
        assert worst(engine.pair_logps(m, ps, 0, None), engine.pair_logps(m, ps, 0, None, packed=False)) < 1e-4


def test_default_held_out_size_follows_the_pairs_trained_on(tmp_path):
    def run(step, **cfg):
        d = tmp_path / f"r{step}-{len(cfg)}"
        d.mkdir()
        (d / "status.json").write_text(json.dumps({"step": step, **cfg.pop("status", {})}))
        return default_max_pairs(d, cfg)
    assert run(20, per_device_train_batch_size=4) == 16          # the demo: 80 pairs seen
    assert run(30, per_device_train_batch_size=4) == 24          # a fifth
    assert run(2, per_device_train_batch_size=4) == 16            # never fewer than 16
    assert run(5000, per_device_train_batch_size=8) == 64         # a real run: 64
    assert run(10, per_device_train_batch_size=2, gradient_accumulation_steps=4, status={"world_size": 2}) == 32
    assert run(None) == 64                                         # unknown: 64
