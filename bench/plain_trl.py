"""The script a user would write against TRL directly: the baseline the training benches compare with."""
import json


def plain_trainer(method: str, model_path: str, common: dict, out_dir: str, callbacks: list, dtype=None):
    """A TRL DPOTrainer, or CPOTrainer in SimPO mode (β 2, γ 1, no SFT term), on builtin:arith-prefs."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prefpilot.data import builtin_files
    rows = [json.loads(x) for x in builtin_files("arith-prefs")["train"].read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, **({"dtype": dtype} if dtype is not None else {}))
    data = Dataset.from_list(rows)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer
        return DPOTrainer(model=model, args=DPOConfig(output_dir=out_dir, disable_tqdm=True, **common),
                          train_dataset=data, processing_class=tok, callbacks=callbacks)
    from trl.experimental.cpo import CPOConfig, CPOTrainer
    return CPOTrainer(model=model, args=CPOConfig(output_dir=out_dir, disable_tqdm=True, loss_type="simpo", beta=2.0,
                                                  simpo_gamma=1.0, cpo_alpha=0.0, **common),
                      train_dataset=data, processing_class=tok, callbacks=callbacks)
