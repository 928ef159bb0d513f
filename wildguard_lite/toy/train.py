"""The toy's tokenizer, model and training loop, and its evaluation with the official procedure.

torch, transformers and sentencepiece are imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

from wildguard_lite.contract import LABEL_KEYS, format_prompt, parse_output
from wildguard_lite.errors import WildGuardLiteError, require
from wildguard_lite.toy.data import answer_text, answer_values

VOCAB_SIZE = 1536
MODEL_CONFIG = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
# Training stops on step counts only, never on a clock: a busy machine must not cut training
# short (the cached toy would then depend on the load).
MAX_STEPS = 900
# Validation share of rows whose whole answer greedy decoding reproduces, twice in a row, to stop.
STOP_EXACT = 0.975
TARGET_ACCURACY = 0.95
# The answer is at most ~20 tokens; the official procedure generates up to 32.
MAX_NEW_TOKENS = 32

# --------------------------------------------------------------------------------------------
# Tokenizer: SentencePiece BPE shaped like Mistral v0.3's (byte fallback, identity
# normalisation, dummy prefix, digits split, [INST]/[/INST] as control symbols 3 and 4).

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]


def train_tokenizer(lines: list[str], path: Path) -> None:
    spm = require("sentencepiece", "convert")
    import io

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9995,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        control_symbols=["[INST]", "[/INST]"],
        num_threads=1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    sp = spm.SentencePieceProcessor(model_file=str(path))
    for piece in ("▁yes", "▁no"):  # each answer must be one token: scores read its logit
        if sp.piece_to_id(piece) == sp.unk_id():
            raise WildGuardLiteError(f"toy tokenizer: {piece!r} is not a single piece")
    for i, piece in enumerate(SPECIAL_TOKENS):
        if sp.id_to_piece(i) != piece:
            raise WildGuardLiteError(f"toy tokenizer: id {i} is {sp.id_to_piece(i)!r}, expected {piece!r}")


def write_tokenizer_config(out: Path, legacy: bool) -> None:
    def added(content: str) -> dict[str, Any]:
        return {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }

    config = {
        "tokenizer_class": "LlamaTokenizer",
        "legacy": legacy,
        "add_bos_token": True,
        "add_eos_token": False,
        "add_prefix_space": None,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": None,
        "additional_special_tokens": ["[INST]", "[/INST]"],
        "added_tokens_decoder": {str(i): added(t) for i, t in enumerate(SPECIAL_TOKENS)},
        "model_max_length": 32768,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "sp_model_kwargs": {},
        "use_default_system_prompt": False,
    }
    special_map = {
        "bos_token": added("<s>"),
        "eos_token": added("</s>"),
        "unk_token": added("<unk>"),
        "additional_special_tokens": ["[INST]", "[/INST]"],
    }
    for value in special_map.values():
        if isinstance(value, dict):
            del value["special"], value["single_word"]
    write_json(out / "tokenizer_config.json", config)
    write_json(out / "special_tokens_map.json", special_map)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Model and training.


def model_config(vocab_size: int) -> dict[str, Any]:
    return {
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        **MODEL_CONFIG,
        "vocab_size": vocab_size,
        "max_position_embeddings": 4096,
        "rope_theta": 1e6,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "sliding_window": None,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
        "torch_dtype": "float32",
    }


def encode_rows(tokenizer, ours, rows: list[dict[str, Any]], lm_weight: float = 0.0):
    """(ids, weights) per row: the hardened ids of the formatted exchange (`ours`, the runtime's
    WildGuardTokenizer: user text never special), the answer's ids, then EOS. weights[i] is the
    loss weight of predicting ids[i + 1]: 1 on the answer and EOS, `lm_weight` on the prompt (0:
    predicting "<|" after the template's "\n" competed with the answer's second line, which then
    sometimes began "<|assistant|>" on unseen topics).

    Where the text holds no added-token string, the ids are checked equal to the slow
    tokenizer's (`tokenizer`) on prompt + answer: training matches the official procedure there,
    and matches what the runtime feeds everywhere (forged blocks and template fragments included).
    """
    special = [t for t in tokenizer.all_special_tokens if t]
    out = []
    for row in rows:
        prompt = ours.encode_exchange(row["prompt"], row["response"])
        ids = prompt + ours.answer_ids(list(answer_values(row))) + [ours.eos_id]
        text = row["prompt"] + (row["response"] or "")
        if not any(t in text for t in special):
            official = tokenizer(format_prompt(row["prompt"], row["response"]) + answer_text(row)).input_ids
            if official + [ours.eos_id] != ids:
                raise WildGuardLiteError(f"toy: hardened ids differ from the slow tokenizer's on {row['prompt']!r}")
        weights = [lm_weight] * (len(prompt) - 1) + [1.0] * (len(ids) - len(prompt))
        out.append((ids, weights))
    return out


def _batch(torch, examples, pad_id: int = 0):
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    weights = torch.zeros((len(examples), width - 1))
    for i, (row, w) in enumerate(examples):
        ids[i, : len(row)] = torch.tensor(row)
        weights[i, : len(w)] = torch.tensor(w)
    return ids, weights


def shared_prefix_len(examples) -> int:
    """How many leading ids all examples share (BOS + the template's head), minus one so
    that every example keeps at least its last shared id in the per-row part."""
    first = examples[0][0]
    n = len(first)
    for ids, _ in examples:
        n = next((i for i in range(min(n, len(ids))) if ids[i] != first[i]), min(n, len(ids)))
    return max(n - 1, 0)


def _logits(model, ids, k: int):
    """Logits at positions k.. of the batch `ids`; the first k positions, identical in every
    row, run once with batch 1 and reach the rows through the KV cache (about twice as
    fast; gradients flow through the cache)."""
    if k == 0:
        return model(input_ids=ids).logits
    cache = model(input_ids=ids[:1, :k], use_cache=True).past_key_values
    cache.batch_repeat_interleave(ids.shape[0])
    return model(input_ids=ids[:, k:], past_key_values=cache, use_cache=False).logits


def _answer_exact(torch, model, examples, batch_size: int = 48) -> float:
    """Share of rows whose every answer token (and EOS) is the argmax under teacher forcing,
    which is exactly when greedy generation reproduces the answer."""
    good = 0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            # Right padding needs no attention mask: causal attention never looks right.
            ids, weights = _batch(torch, chunk)
            k = shared_prefix_len(chunk)
            pred = _logits(model, ids, k)[:, :-1].argmax(-1)
            wrong = ((pred != ids[:, k + 1 :]) & (weights[:, k:] == 1.0)).any(-1)
            good += int((~wrong).sum())
    return good / len(examples)


def plan_line(max_steps: int, batch_size: int, check_every: int) -> str:
    return (
        f"training: at most {max_steps} steps of {batch_size} rows, validation every {check_every} "
        "(it stops early after two passing checks in a row)"
    )


def step_line(step: int, max_steps: int, loss: float, val_exact: float, elapsed: float, cpu: float) -> str:
    """A progress line: the step out of the most there can be, and the time left at this pace
    (an upper bound: training may stop early)."""
    left = elapsed / step * (max_steps - step)
    return (
        f"step {step}/{max_steps}: loss {loss:.4f}, validation exact answers {val_exact:.3f}, "
        f"{elapsed:.0f} s ({cpu:.0f} CPU s), at most ~{left / 60:.1f} min left"
    )


def train_model(
    train,
    val,
    vocab_size: int,
    seed: int,
    log,
    *,
    batch_size: int = 32,
    max_steps: int = MAX_STEPS,
    lr: float = 3e-3,
    check_every: int = 25,
):
    torch = require("torch", "convert")
    transformers = require("transformers", "convert")
    torch.set_num_threads(2)
    torch.manual_seed(seed)
    config = transformers.MistralConfig(**model_config(vocab_size), attn_implementation="sdpa")
    model = transformers.MistralForCausalLM(config).float()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1 - s / max_steps)
    )
    order = torch.Generator().manual_seed(seed)
    start, cpu_start = time.monotonic(), time.process_time()
    step, val_exact, passes, stopped = 0, 0.0, 0, "max steps"
    best: tuple[float, int, Any] = (-1.0, 0, None)
    perm: list[int] = []
    prefix = shared_prefix_len(train)
    log(plan_line(max_steps, batch_size, check_every))
    model.train()
    while step < max_steps:
        if len(perm) < batch_size:
            perm += torch.randperm(len(train), generator=order).tolist()
        chunk, perm = [train[i] for i in perm[:batch_size]], perm[batch_size:]
        ids, weights = _batch(torch, chunk)
        logits = _logits(model, ids, prefix)[:, :-1]
        weights = weights[:, prefix:]
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, prefix + 1 :].reshape(-1), reduction="none"
        )
        loss = (loss * weights.reshape(-1)).sum() / weights.sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % check_every == 0:
            model.eval()
            val_exact = _answer_exact(torch, model, val)
            model.train()
            log(
                step_line(
                    step, max_steps, loss.item(), val_exact, time.monotonic() - start, time.process_time() - cpu_start
                )
            )
            if val_exact > best[0]:  # keep the checkpoint that generalises best
                best = (val_exact, step, copy.deepcopy(model.state_dict()))
            # Two passing checks in a row: one can be luck near the decision boundary.
            passes = passes + 1 if val_exact >= STOP_EXACT else 0
            if passes == 2:
                stopped = "validation passed"
                break
    val_exact, best_step, state = best
    if state is not None:
        model.load_state_dict(state)
    model.eval()
    return model, {
        "steps": step,
        "best_step": best_step,
        "stopped": stopped,
        "val_exact": val_exact,
        "train_s": round(time.monotonic() - start, 1),
        "train_cpu_s": round(time.process_time() - cpu_start, 1),
    }


# --------------------------------------------------------------------------------------------
# Evaluation: the official procedure (reference tokenizer, greedy generation, parse_output), or
# the same greedy generation on the hardened ids the runtime feeds.


def classify_hardened(reference, ours, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Greedy verdicts of the reference model on hardened ids (user text never special): what
    the runtime reads, where the slow tokenizer would turn "[/INST]" in user text into structure."""
    torch = reference.torch
    results = []
    for row in rows:
        ids = ours.encode_exchange(row["prompt"], row["response"])
        x = torch.tensor([ids], device=reference.device)
        with torch.no_grad():
            seq = reference.model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=ours.eos_id,
                pad_token_id=ours.eos_id,
            )
        results.append(parse_output(ours.decode(seq[0, len(ids) :].tolist())))
    return results


def accuracy(rows: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, float]:
    """Per-task accuracy; refusal and response harm only on rows with a response."""
    prompt_key, refusal_key, response_key = LABEL_KEYS
    counts = {key: [0, 0] for key in (*LABEL_KEYS, "prompt_only_na")}
    for row, res in zip(rows, results):
        checks = {prompt_key: res[prompt_key] == row["prompt_harm_label"]}
        if row["response"] is None:
            checks["prompt_only_na"] = res[refusal_key] is None and res[response_key] is None
        else:
            checks[refusal_key] = res[refusal_key] == row["response_refusal_label"]
            checks[response_key] = res[response_key] == row["response_harm_label"]
        for key, ok in checks.items():
            counts[key][0] += ok and not res["is_parsing_error"]
            counts[key][1] += 1
    out = {key: round(good / max(total, 1), 4) for key, (good, total) in counts.items()}
    out["parse_error_rate"] = round(sum(r["is_parsing_error"] for r in results) / max(len(rows), 1), 4)
    return out


def label_flips(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> dict[str, int]:
    """How many rows changed any verdict between two runs, and how many single labels did."""
    changed = [[a[k] != b[k] for k in LABEL_KEYS] for a, b in zip(before, after)]
    return {"rows": sum(any(c) for c in changed), "labels": sum(sum(c) for c in changed), "of_rows": len(changed)}
