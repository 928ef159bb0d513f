"""The one reference tokenization, fed as ids to every engine.

The official package tokenizes with the slow SentencePiece tokenizer (transformers'
`LlamaTokenizer`, `use_fast=False`) and adds BOS once. This module reproduces that
algorithm with the `sentencepiece` library alone (no transformers at run time), honouring
the checkpoint's `legacy` flag, with one deliberate hardening: only the template's own
control tokens (`[INST]`, `[/INST]`) are split out as special tokens. User text is encoded
as ordinary text, so a prompt containing `</s>` or `[/INST]` cannot forge structure; on
every other text the ids equal the official ones (tests compare them).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .contract import CUES, TEMPLATE_CONTROL_TOKENS, TEMPLATE_HEAD, TEMPLATE_MIDDLE, TEMPLATE_TAIL
from .errors import ModelFileError

SPIECE_UNDERLINE = "\u2581"

# Protobuf trick: appending a second ModelProto.normalizer_spec (field 3) holding only
# add_dummy_prefix=false (field 3, varint 0) merges into the first on parse. This is what
# transformers does for legacy=False, without needing the protobuf package.
_NO_DUMMY_PREFIX_PATCH = b"\x1a\x02\x18\x00"


@dataclass(frozen=True)
class AddedToken:
    content: str
    id: int
    lstrip: bool = False
    rstrip: bool = False


@dataclass(frozen=True)
class TokenizerSpec:
    """Everything needed to reproduce the slow tokenizer; small enough to embed in a GGUF."""

    sp_model: bytes
    legacy: bool = True
    add_bos: bool = True
    add_prefix_space: bool = True
    unk_token: str = "<unk>"
    added_tokens: tuple[AddedToken, ...] = field(default_factory=tuple)

    @classmethod
    def from_hf_folder(cls, folder: str | os.PathLike) -> "TokenizerSpec":
        """Read `tokenizer.model` and `tokenizer_config.json` of a Hugging Face checkpoint."""
        folder = Path(folder)
        model_file = folder / "tokenizer.model"
        if not model_file.is_file():
            raise ModelFileError(
                f"{folder}: no tokenizer.model; WildGuard's reference is the slow SentencePiece "
                "tokenizer, so the checkpoint must ship tokenizer.model"
            )
        config: dict[str, Any] = {}
        config_file = folder / "tokenizer_config.json"
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ModelFileError(f"{config_file}: not valid JSON ({exc})") from None
        where = str(config_file)
        if not isinstance(config, dict):
            raise ModelFileError(f"{where}: must hold a JSON object, got {type(config).__name__}")
        decoder = config.get("added_tokens_decoder") or {}
        if not isinstance(decoder, dict):
            raise ModelFileError(f"{where}: 'added_tokens_decoder' must be an object of id -> token")
        added = []
        for key, entry in decoder.items():
            if not isinstance(entry, dict) or not str(key).isdigit():
                raise ModelFileError(f"{where}: added_tokens_decoder entry {key!r} must map a numeric id to an object")
            added.append(
                _added_token(
                    where, {"id": int(key), **{k: entry[k] for k in ("content", "lstrip", "rstrip") if k in entry}}
                )
            )
        unk = config.get("unk_token", "<unk>")
        if isinstance(unk, dict):
            unk = unk.get("content", "<unk>")
        flags = {name: _flag(where, config, name) for name in ("legacy", "add_bos_token", "add_prefix_space")}
        if not isinstance(unk, str):
            raise ModelFileError(f"{where}: 'unk_token' must be a string, got {type(unk).__name__}")
        return cls(
            sp_model=model_file.read_bytes(),
            # As LlamaTokenizer: legacy missing or null means True; the other two flags
            # default to True when missing, and an explicit null is falsy.
            legacy=flags["legacy"] is not False,
            add_bos=bool(config.get("add_bos_token", True)),
            add_prefix_space=bool(config.get("add_prefix_space", True)),
            unk_token=unk,
            added_tokens=tuple(sorted(added, key=lambda t: t.id)),
        )

    def config_json(self) -> str:
        """Everything but the SentencePiece model, as JSON (for GGUF metadata)."""
        return json.dumps(
            {
                "legacy": self.legacy,
                "add_bos": self.add_bos,
                "add_prefix_space": self.add_prefix_space,
                "unk_token": self.unk_token,
                "added_tokens": [t.__dict__ for t in self.added_tokens],
            },
            sort_keys=True,
        )

    @classmethod
    def from_config_json(cls, sp_model: bytes, text: str) -> "TokenizerSpec":
        """Parse config_json() output strictly: a wrong type is a corrupt file, never coerced."""
        where = "embedded tokenizer config"
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ModelFileError(f"{where}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ModelFileError(f"{where}: must be a JSON object, got {type(data).__name__}")
        expected = {"legacy": bool, "add_bos": bool, "add_prefix_space": bool, "unk_token": str, "added_tokens": list}
        for name, kind in expected.items():
            if not isinstance(data.get(name), kind):
                raise ModelFileError(
                    f"{where}: '{name}' must be {kind.__name__}, got {type(data.get(name)).__name__}; "
                    "convert the checkpoint again with 'wildguard-lite convert'"
                )
        return cls(
            sp_model=sp_model,
            legacy=data["legacy"],
            add_bos=data["add_bos"],
            add_prefix_space=data["add_prefix_space"],
            unk_token=data["unk_token"],
            added_tokens=tuple(_added_token(where, t) for t in data["added_tokens"]),
        )


def _flag(where: str, config: dict, name: str) -> bool | None:
    value = config.get(name)
    if value is not None and not isinstance(value, bool):
        raise ModelFileError(f"{where}: '{name}' must be true, false or null, got {value!r}")
    return value


def _added_token(where: str, entry: Any) -> AddedToken:
    """One added token, every field type-checked (a config of the wrong shape is refused)."""
    if not isinstance(entry, dict):
        raise ModelFileError(f"{where}: an added token must be an object, got {type(entry).__name__}")
    content, token_id = entry.get("content"), entry.get("id")
    lstrip, rstrip = entry.get("lstrip", False), entry.get("rstrip", False)
    if (
        not isinstance(content, str)
        or not content
        or isinstance(token_id, bool)
        or not isinstance(token_id, int)
        or not isinstance(lstrip, bool)
        or not isinstance(rstrip, bool)
        or set(entry) - {"content", "id", "lstrip", "rstrip"}
    ):
        raise ModelFileError(
            f"{where}: malformed added token {entry!r} (needs content: non-empty string, id: integer, "
            "lstrip/rstrip: booleans)"
        )
    return AddedToken(content=content, id=token_id, lstrip=lstrip, rstrip=rstrip)


def _split_on(text: str, tokens: dict[str, AddedToken]) -> list[str | AddedToken]:
    """Split template text at its control tokens (longest match first)."""
    if not tokens:
        return [text]
    pattern = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    parts: list[str | AddedToken] = []
    pos = 0
    for match in re.finditer(pattern, text):
        parts.append(text[pos : match.start()])
        parts.append(tokens[match.group(0)])
        pos = match.end()
    parts.append(text[pos:])
    return parts


def _text(part: str | AddedToken) -> str:
    """A template piece that must be text (beside user text, or the answer's context)."""
    if not isinstance(part, str):
        raise ModelFileError(f"tokenizer: the template ends in control token {part.content!r} where text belongs")
    return part


def _join(left: list[str | AddedToken], text: str, right: list[str | AddedToken]) -> list[str | AddedToken]:
    """Insert user text between two split template pieces (both end/start with text)."""
    return [*left[:-1], _text(left[-1]) + text + _text(right[0]), *right[1:]]


class WildGuardTokenizer:
    """Token ids for WildGuard inputs and answers, equal to the official slow tokenizer's."""

    def __init__(self, spec: TokenizerSpec):
        import sentencepiece as spm

        self.spec = spec
        self._sp = spm.SentencePieceProcessor()
        proto = spec.sp_model if spec.legacy else spec.sp_model + _NO_DUMMY_PREFIX_PATCH
        try:
            self._sp.LoadFromSerializedProto(proto)
        except Exception as exc:  # sentencepiece raises RuntimeError/OSError variants
            raise ModelFileError(f"the SentencePiece tokenizer model is corrupt ({exc})") from None
        self.vocab_size = self._sp.get_piece_size()
        self.bos_id = self._sp.bos_id()
        self.eos_id = self._sp.eos_id()
        self._unk_len = len(self._sp.encode(spec.unk_token))
        all_added = {t.content: t for t in spec.added_tokens}
        # Only added tokens that the template itself contains are ever split out.
        template_text = TEMPLATE_HEAD + TEMPLATE_MIDDLE + TEMPLATE_TAIL
        self._template_tokens = {c: t for c, t in all_added.items() if c in template_text}
        self._check_control_tokens()
        self._head = _split_on(TEMPLATE_HEAD, self._template_tokens)
        self._middle = _split_on(TEMPLATE_MIDDLE, self._template_tokens)
        self._tail = _split_on(TEMPLATE_TAIL, self._template_tokens)
        self.yes_id, self.no_id, self.cue_ids = self._answer_ids()

    def _check_control_tokens(self) -> None:
        """Once, at load: every added id is in the vocabulary, BOS/EOS exist, and the template's
        [INST]/[/INST] resolve to the vocabulary's control ids. Without this a config lacking
        them loads silently and the template's structure is encoded as plain text."""
        fix = "re-export the checkpoint with its original tokenizer_config.json (added_tokens_decoder)"
        for token in self.spec.added_tokens:
            if not 0 <= token.id < self.vocab_size:
                raise ModelFileError(
                    f"tokenizer: added token {token.content!r} has id {token.id}, outside the "
                    f"vocabulary of {self.vocab_size}; {fix}"
                )
        if (self.spec.add_bos and self.bos_id < 0) or self.eos_id < 0:
            raise ModelFileError("tokenizer: the SentencePiece model has no BOS/EOS token; WildGuard's needs both")
        for content in TEMPLATE_CONTROL_TOKENS:
            control = self._template_tokens.get(content)
            if control is None:
                raise ModelFileError(
                    f"tokenizer: no added token for WildGuard's control token {content!r}, so the "
                    f"template would be encoded as plain text; {fix}"
                )
            if self._sp.id_to_piece(control.id) != content or not self._sp.is_control(control.id):
                raise ModelFileError(
                    f"tokenizer: {content!r} maps to id {control.id} "
                    f"({self._sp.id_to_piece(control.id)!r}), which is not that control token of "
                    f"the SentencePiece model; {fix}"
                )

    # -- the slow tokenizer's algorithm, on pre-split chunks ---------------------------------
    def _encode_chunk(self, text: str) -> list[int]:
        if self.spec.legacy or not text.startswith((SPIECE_UNDERLINE, " ")):
            return list(self._sp.encode(text))
        ids = self._sp.encode(self.spec.unk_token + text)
        return list(ids[self._unk_len :]) if len(ids) >= self._unk_len else list(ids)

    def _encode_parts(self, parts: list[str | AddedToken], first: bool = True) -> list[int]:
        """Ids of pre-split parts; `first` when they start the text (legacy=False prefix)."""
        parts = list(parts)
        if not self.spec.legacy:
            parts = [p.replace(SPIECE_UNDERLINE, " ") if isinstance(p, str) else p for p in parts]
            if first and self.spec.add_prefix_space and parts and isinstance(parts[0], str):
                parts[0] = SPIECE_UNDERLINE + parts[0]
        # Added tokens with lstrip/rstrip eat the whitespace beside them.
        for i, part in enumerate(parts):
            if isinstance(part, AddedToken):
                after = parts[i + 1] if i + 1 < len(parts) else None
                before = parts[i - 1] if i > 0 else None
                if part.rstrip and isinstance(after, str):
                    parts[i + 1] = after.lstrip()
                if part.lstrip and isinstance(before, str):
                    parts[i - 1] = before.rstrip()
        ids: list[int] = []
        pieces_first: list[int] | None = None
        for i, part in enumerate(parts):
            if isinstance(part, AddedToken):
                ids.append(part.id)
            elif part:
                chunk = self._encode_chunk(part)
                if i == 0:
                    pieces_first = chunk
                ids.extend(chunk)
        # transformers drops a lone leading "▁" piece before a special token (legacy=False).
        if (
            first
            and not self.spec.legacy
            and pieces_first is not None
            and len(pieces_first) == 1
            and self._sp.id_to_piece(pieces_first[0]) == SPIECE_UNDERLINE
            and len(parts) > 1
            and isinstance(parts[1], AddedToken)
        ):
            ids = ids[1:]
        return ids

    def _exchange_parts(self, prompt: str, response: str) -> list[str | AddedToken]:
        return _join(_join(self._head, prompt, self._middle), response, self._tail)

    # -- public API --------------------------------------------------------------------------
    def encode_exchange(self, prompt: str, response: str | None = None) -> list[int]:
        """Ids of the formatted exchange: BOS once, then the template with the user text.

        User text is never parsed for special tokens.
        """
        ids = self._encode_parts(self._exchange_parts(prompt, response or ""))
        return ([self.bos_id] if self.spec.add_bos else []) + ids

    def encode_official(self, text: str) -> list[int]:
        """The unhardened official procedure on a full text: every added token is split out.

        For parity tests only; user text containing `[/INST]` or `</s>` becomes structure here.
        """
        tokens = {t.content: t for t in self.spec.added_tokens}
        ids = self._encode_parts(_split_on(text, tokens))
        return ([self.bos_id] if self.spec.add_bos else []) + ids

    def decode(self, ids: list[int]) -> str:
        """Text of generated ids, control tokens dropped (as `skip_special_tokens=True`)."""
        return self._sp.decode([i for i in ids if not self._sp.is_control(i)])

    def _tail_ids(self, answer: str = "") -> list[int]:
        # The answer is generated right after the template's last chunk, so it is tokenized
        # in that chunk's context: the last control token, then the chunk, never first.
        last = max((i for i, p in enumerate(self._tail) if isinstance(p, AddedToken)), default=None)
        if last is None:
            parts: list[str | AddedToken] = [_text(self._tail[-1]) + answer]
            return self._encode_parts(parts, first=False)
        parts = [*self._tail[last:-1], _text(self._tail[-1]) + answer]
        return self._encode_parts(parts, first=False)[1:]

    def _answer_ids(self) -> tuple[int, int, tuple[tuple[int, ...], ...]]:
        """Ids of the three cues and of the ' yes'/' no' answers, checked against the
        tokenization of every full answer text so score mode sees what generation would."""
        words: dict[str, int | None] = {"yes": None, "no": None}
        cues: list[tuple[int, ...]] = []
        text = ""
        for k, cue in enumerate(CUES):
            cue_text = ("\n" if k else "") + cue
            before = self._tail_ids(text)
            after = self._tail_ids(text + cue_text)
            if after[: len(before)] != before:
                raise ModelFileError("this tokenizer splits WildGuard's answer cues unexpectedly; use mode='generate'")
            cues.append(tuple(after[len(before) :]))
            for word in words:
                with_word = self._tail_ids(text + cue_text + " " + word)
                extra = with_word[len(after) :]
                if with_word[: len(after)] != after or len(extra) != 1:
                    raise ModelFileError(
                        f"' {word}' is not a single token after '{cue}' in this tokenizer; "
                        "score mode needs it (use mode='generate')"
                    )
                if words[word] not in (None, extra[0]):
                    raise ModelFileError(f"' {word}' tokenizes differently after different cues")
                words[word] = extra[0]
            if k == 1:
                # " n/a" (several pieces) is what the response labels get for a prompt alone.
                self.na_ids = tuple(self._tail_ids(text + cue_text + " n/a")[len(after) :])
            text += cue_text + " yes"
        yes, no = words["yes"], words["no"]
        assert yes is not None and no is not None  # set for each cue above
        return yes, no, tuple(cues)

    def answer_ids(self, answers: list[str]) -> list[int]:
        """Ids the model would generate for `answers` (yes/no/n/a per label, joined lines)."""
        lines = [f"{cue} {a}" for cue, a in zip(CUES, answers)]
        base = self._tail_ids()
        return self._tail_ids("\n".join(lines))[len(base) :]


def load_tokenizer_from_folder(folder: str | os.PathLike) -> WildGuardTokenizer:
    """The reference tokenizer of a Hugging Face checkpoint folder."""
    return WildGuardTokenizer(TokenizerSpec.from_hf_folder(folder))
