"""The transformers reference: WildGuard's official procedure, used to judge every engine.

Slow SentencePiece tokenizer (`use_fast=False`), BOS added once, greedy generation of at
most 32 tokens, decode only the generated tokens, parse with the official regex. torch and
transformers are imported lazily so that importing this module stays cheap.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from wildguard_lite.contract import LABEL_KEYS, format_prompt, parse_output, validate_item
from wildguard_lite.errors import MissingDependencyError, ModelFileError, WildGuardLiteError, require

MAX_NEW_TOKENS = 32


class TransformersReference:
    """Official-procedure classifier on a Hugging Face checkpoint folder.

    Args:
        model_dir: folder with config.json, weights and tokenizer.model + tokenizer_config.json.
        device: "cuda" or "cpu"; default cuda when available.
        dtype: torch dtype or its name; default bfloat16 on cuda, float32 on cpu.
    """

    def __init__(self, model_dir, device: str | None = None, dtype: Any = None):
        self.torch = torch = require("torch", "convert")
        transformers = require("transformers", "convert")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        elif isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        self.device, self.dtype, self.model_dir = device, dtype, str(model_dir)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_dir, use_fast=False)
            self.model = transformers.AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"{self.model_dir}: cannot load the checkpoint with transformers ({exc})") from None
        except ImportError as exc:  # the slow tokenizer needs protobuf when legacy=false
            raise MissingDependencyError(f"{self.model_dir}: cannot load the tokenizer: {exc}") from None
        self.model.to(device).eval()
        tok = self.tokenizer
        self.bos_id, self.eos_id = tok.bos_token_id, tok.eos_token_id
        # The answers " yes"/" no" must be single pieces: their logits are the scores.
        self.yes_id, self.no_id = (tok.convert_tokens_to_ids(p) for p in ("▁yes", "▁no"))
        if tok.unk_token_id in (self.yes_id, self.no_id):
            raise ModelFileError(f"{self.model_dir}: the tokenizer has no single '▁yes'/'▁no' piece")

    def token_ids(self, prompt: str, response: str | None = None) -> list[int]:
        """BOS + the slow tokenizer's ids of the formatted exchange."""
        ids = self.tokenizer(format_prompt(prompt, response), add_special_tokens=True).input_ids
        if not ids or ids[0] != self.bos_id or (len(ids) > 1 and ids[1] == self.bos_id):
            raise WildGuardLiteError(f"{self.model_dir}: the tokenizer did not add exactly one BOS")
        return ids

    def last_logits(self, ids: list[int]):
        """Float32 logits (vocab,) at the last position of `ids`."""
        torch = self.torch
        with torch.no_grad():
            logits = self.model(input_ids=torch.tensor([ids], device=self.device)).logits
        return logits[0, -1].float().cpu().numpy()

    def classify(self, items: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Official verdicts, plus "scores" (P(yes) renormalised over " yes"/" no" where the
        model answered yes/no, None where it answered n/a) and "output" (the generated text)."""
        return [self._classify_one(*validate_item(item, i)) for i, item in enumerate(items)]

    def _classify_one(self, prompt: str, response: str | None) -> dict[str, Any]:
        torch = self.torch
        ids = self.token_ids(prompt, response)
        input_ids = torch.tensor([ids], device=self.device)
        with torch.no_grad():
            out = self.model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                eos_token_id=self.eos_id,
                pad_token_id=self.eos_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        generated = out.sequences[0, len(ids) :].tolist()
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        result = parse_output(text)
        scores = self._scores(generated, [step[0] for step in out.logits])
        result["scores"] = {k: (scores[i] if result[k] is not None else None) for i, k in enumerate(LABEL_KEYS)}
        result["output"] = text
        return result

    def _scores(self, generated: list[int], logits) -> list[float | None]:
        """P(yes) at the first generated yes/no token of each answer line that follows its cue."""
        scores: list[float | None] = [None] * len(LABEL_KEYS)
        for j, token in enumerate(generated):
            if token not in (self.yes_id, self.no_id):
                continue
            before = self.tokenizer.decode(generated[:j], skip_special_tokens=True)
            line = before.count("\n")
            if line < len(scores) and scores[line] is None and before.split("\n")[-1].rstrip().endswith(":"):
                scores[line] = _sigmoid(float(logits[j][self.yes_id]) - float(logits[j][self.no_id]))
        return scores


def _sigmoid(x: float) -> float:
    """P(yes) = softmax over (yes, no) logits, without overflow."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)
