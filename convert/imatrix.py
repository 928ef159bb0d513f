"""The importance matrix: per input column of each linear layer, the mean of the squared inputs
over calibration exchanges in WildGuard's own format, for llama.cpp's importance-weighted
quantization (IQ4_NL, IQ3_M, ... and the types that require one: IQ3_XXS, IQ2_M).

llama-cpp-python ships no `llama-imatrix` tool, so the matrix is computed here with torch
forward hooks on the checkpoint (bf16 on CPU), mapped to the GGUF's tensor names and passed to
`llama_model_quantize` (convert/quantize.py). The matrix is saved in llama.cpp's own imatrix
GGUF layout (`NAME.in_sum2`, `NAME.counts`), which `llama-quantize --imatrix` reads too, and a
saved matrix (ours or llama-imatrix's) can be given to `convert --imatrix FILE.gguf` again.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wildguard_lite.contract import ITEM_FIELDS, check_fields, validate_item
from wildguard_lite.errors import InvalidInputError, ModelFileError, require

# Calibration exchanges drawn from the toy's training rows (seeded: the same every run).
DEFAULT_CALIBRATION_ROWS = 128
TOY_CALIBRATION = "toy"  # what the manifest records for the default calibration set
MAX_CALIBRATION_TOKENS = 2048  # an exchange longer than this is cut (calibration only)
# A calibration row's fields: an exchange, optionally in the WildGuardTest layout (labels unused).
CALIBRATION_FIELDS = (
    *ITEM_FIELDS,
    "id",
    "adversarial",
    "prompt_harm_label",
    "response_refusal_label",
    "response_harm_label",
    "subcategory",
)


@dataclass
class Imatrix:
    """Sums of squared inputs per GGUF tensor name, the token count each saw, and provenance."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    dataset: str = ""
    exchanges: int = 0
    tokens: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What llama_model_quantize takes: per-column means (sums divided by the counts)."""
        return {k: (v / max(1, self.counts[k])).astype(np.float32) for k, v in self.sums.items() if self.counts[k]}

    def record(self, file_name: str) -> dict:
        return {
            "file": file_name,
            "dataset": self.dataset,
            "exchanges": self.exchanges,
            "tokens": self.tokens,
            "tensors": len(self.sums),
        }


def calibration_rows(source: Path | None, limit: int | None = None) -> tuple[list[dict], str]:
    """Exchanges ({prompt, response?}) and the name recorded for them: a JSONL file's rows, or
    without one a seeded sample of the toy's training rows (never its held-out rows)."""
    limit = DEFAULT_CALIBRATION_ROWS if limit is None else limit
    if source is None:
        from wildguard_lite.toy.data import answer_values, make_dataset

        train, _, _ = make_dataset(0)
        rng = random.Random(0)
        rows = rng.sample(train, min(limit, len(train)))
        return [
            {"prompt": r["prompt"], "response": r.get("response"), "answers": list(answer_values(r))} for r in rows
        ], TOY_CALIBRATION
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(
            f"--imatrix {path}: no such file; give a JSONL file of exchanges or a saved .gguf matrix"
        )
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError as exc:
                raise InvalidInputError(f"--imatrix {path} line {n}: invalid JSON ({exc})") from None
            where = f"--imatrix {path} line {n}: "
            try:
                prompt, response = validate_item(item)
                check_fields(item, CALIBRATION_FIELDS)
            except InvalidInputError as exc:
                raise InvalidInputError(f"{where}{exc}") from None
            rows.append({"prompt": prompt, "response": response})
            if len(rows) >= limit:
                break
    if not rows:
        raise InvalidInputError(f"--imatrix {path}: no exchanges in the file; one JSON object a line with 'prompt'")
    return rows, path.name


def compute_imatrix(folder: Path, rows: list[dict], dataset: str, threads: int | None = None) -> Imatrix:
    """Run the checkpoint (transformers, bf16, CPU) over the exchanges with a forward hook on
    every linear layer, summing the squares of its inputs per column."""
    torch = require("torch", "convert")
    transformers = require("transformers", "convert")
    gguf = require("gguf", "convert")
    from wildguard_lite.convert.gguf_export import check_checkpoint
    from wildguard_lite.defaults import default_threads
    from wildguard_lite.tokenization import load_tokenizer_from_folder

    config = check_checkpoint(folder)
    tokenizer = load_tokenizer_from_folder(folder)
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    torch.set_num_threads(threads or default_threads())
    model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.bfloat16)
    model.eval()
    result = Imatrix(dataset=dataset)
    hooks = []

    def hook_for(gguf_name: str):
        def hook(module, inputs, output) -> None:
            x = inputs[0].detach().to(torch.float32).reshape(-1, inputs[0].shape[-1])
            sums = (x * x).sum(dim=0).numpy().astype(np.float64)
            if gguf_name in result.sums:
                result.sums[gguf_name] += sums
            else:
                result.sums[gguf_name] = sums
            result.counts[gguf_name] = result.counts.get(gguf_name, 0) + x.shape[0]

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            gguf_name = name_map.get_name(f"{name}.weight", try_suffixes=(".weight",))
            if gguf_name is None:
                raise ModelFileError(f"{folder}: no GGUF name for the linear layer '{name}'")
            hooks.append(module.register_forward_hook(hook_for(gguf_name)))
    try:
        with torch.inference_mode():
            for row in rows:
                # The exchange and the answer after it: the cues are where the verdict is read.
                answers = row.get("answers") or (["no"] * 3 if row.get("response") else ["no", "n/a", "n/a"])
                ids = tokenizer.encode_exchange(row["prompt"], row.get("response")) + tokenizer.answer_ids(answers)
                ids = ids[-MAX_CALIBRATION_TOKENS:]
                model(torch.tensor([ids]), use_cache=False)
                result.exchanges += 1
                result.tokens += len(ids)
    finally:
        for h in hooks:
            h.remove()
        del model
    # The sums as the file stores them (f32): the matrix used is the one saved, bit for bit.
    result.sums = {k: v.astype(np.float32).astype(np.float64) for k, v in result.sums.items()}
    return result


def save_imatrix(imatrix: Imatrix, path: Path) -> None:
    """llama.cpp's imatrix GGUF: per tensor NAME.in_sum2 (f32 [n_cols]) and NAME.counts."""
    gguf = require("gguf", "convert")
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", [imatrix.dataset])
    writer.add_uint32("imatrix.chunk_count", imatrix.exchanges)
    writer.add_uint32("imatrix.chunk_size", max(1, imatrix.tokens // max(1, imatrix.exchanges)))
    for name in sorted(imatrix.sums):
        writer.add_tensor(f"{name}.in_sum2", imatrix.sums[name].astype(np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[float(imatrix.counts[name])]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def load_imatrix(path: Path) -> Imatrix:
    """A saved imatrix GGUF (this module's or llama-imatrix's), one matrix per tensor."""
    gguf = require("gguf", "convert")
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"--imatrix {path}: not a readable GGUF file ({exc})") from None
    tensors = {t.name: np.asarray(t.data, dtype=np.float64).reshape(-1) for t in reader.tensors}
    out = Imatrix(dataset=path.name)
    for name, values in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors.get(f"{base}.counts")
        if counts is None or counts.size != 1:
            raise InvalidInputError(f"--imatrix {path}: '{base}' has no single count (a mixture-of-experts matrix?)")
        out.sums[base], out.counts[base] = values, int(counts[0])
    if not out.sums:
        raise InvalidInputError(f"--imatrix {path}: no NAME.in_sum2 tensors; this is not an importance matrix")
    chunks = reader.fields.get("imatrix.chunk_count")
    out.exchanges = int(chunks.parts[-1][0]) if chunks is not None else 0
    out.tokens = max(out.counts.values())
    return out


def check_imatrix(imatrix: Imatrix, config: dict) -> None:
    """Every quantized weight of the model needs its row in the matrix, of the right length."""
    from wildguard_lite.convert.quantize import row_lengths

    lengths = row_lengths(config)
    want = {
        "attn_q": lengths["token_embd, attn_q/k/v, ffn_gate/up, output"],
        "attn_output": lengths["attn_output"],
        "ffn_down": lengths["ffn_down"],
    }
    for i in range(int(config["num_hidden_layers"])):
        for kind, n in want.items():
            name = f"blk.{i}.{kind}.weight"
            have = imatrix.sums.get(name)
            if have is None or have.size != n:
                got = "missing" if have is None else f"{have.size} columns"
                raise InvalidInputError(
                    f"the importance matrix does not fit this model: {name} {got}, expected {n} columns; "
                    "compute it for this checkpoint (--imatrix without a file, or a JSONL file)"
                )
