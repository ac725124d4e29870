"""A small causal transformer language model over characters, trained on a text that ships
with Python itself (the source of the standard library's `argparse` module), offline.

Embedding + learned positions -> 2 TransformerEncoderLayers (pre-norm, causal self-attention
through the fused attention kernel) -> LayerNorm -> Linear over the characters; Adam, one
compiled training step. It prints the loss curve against the text's unigram entropy (the loss
of the best model that ignores context: the bar to get well below) and a sample (temperature
0.8, seeded). About a minute on 2 cores.
"""
import argparse
import math
import sys
import time

import numpy as np

import graphc
from graphc import nn, optim

T, BATCH, D, HEADS, FF, LAYERS = 64, 32, 64, 4, 128, 2
STEPS, LR = 1500, 3e-3


def corpus():
    with open(argparse.__file__, encoding="utf-8") as f:
        text = f.read()
    chars = sorted(set(text))
    ids = np.array([chars.index(ch) for ch in text], np.int64)
    return text, chars, ids


def unigram_entropy(ids, vocab) -> float:
    """-sum p log p of the character frequencies, in nats (the units of the loss)."""
    p = np.bincount(ids, minlength=vocab) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


class CharLM(nn.Module):
    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.tok = self.add_child("tok", nn.Embedding(vocab, D, seed=1))
        self.add_param("pos", np.random.default_rng(2).normal(0.0, 0.1, (T, D)))
        self.blocks = [self.add_child(f"block{i}", nn.TransformerEncoderLayer(
            D, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=True,
            seed=10 + i)) for i in range(LAYERS)]
        self.norm = self.add_child("norm", nn.LayerNorm(D))
        self.head = self.add_child("head", nn.Linear(D, vocab, seed=3))

    def forward(self, ids):                       # (B, T) int64 -> (B * T, vocab) logits
        x = self.tok(ids) * math.sqrt(D) / 4.0 + self.param("pos")
        for block in self.blocks:
            x = block(x, is_causal=True)
        return graphc.reshape(self.head(self.norm(x)), (-1, self.vocab))


def main(steps: int = STEPS):
    text, chars, ids = corpus()
    vocab = len(chars)
    entropy = unigram_entropy(ids, vocab)
    print(f"text: {argparse.__file__} ({len(text)} characters, {vocab} distinct); "
          f"unigram entropy {entropy:.3f} nats")
    split = int(len(ids) * 0.9)            # the last 10%: held out, to score the model
    train, held = ids[:split], ids[split:]
    model = CharLM(vocab)
    step = nn.TrainStep(model, nn.cross_entropy, optim.Adam(LR),
                        graphc.tensor((BATCH, T), "int64"), graphc.tensor((BATCH * T,), "int64"))
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    curve = []
    for k in range(1, steps + 1):
        at = rng.integers(0, len(train) - T - 1, BATCH)
        x = np.stack([train[a:a + T] for a in at])
        y = np.stack([train[a + 1:a + T + 1] for a in at]).reshape(-1)
        curve.append(step(x, y))
        if k % 100 == 0:
            print(f"step {k:4d}  loss {np.mean(curve[-100:]):.3f}  "
                  f"({np.mean(curve[-100:]) / entropy:.0%} of the unigram entropy)")
    seconds = time.perf_counter() - start
    predict = nn.Predict(model, graphc.tensor(("B", T), "int64"))
    starts = np.arange(0, len(held) - T - 1, T)
    logits = predict(np.stack([held[a:a + T] for a in starts]))
    labels = np.stack([held[a + 1:a + T + 1] for a in starts]).reshape(-1)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    final = float(-logp[np.arange(len(labels)), labels].mean())
    print(f"{steps} steps in {seconds:.1f} s (compile included): training loss "
          f"{np.mean(curve[-100:]):.3f}, held-out loss {final:.3f} nats; unigram entropy "
          f"{entropy:.3f}")

    context = list(ids[:T])
    out, pick = [], np.random.default_rng(1)
    for _ in range(300):          # one character at a time, from softmax(logits / 0.8)
        logits = predict(np.array([context[-T:]]))[-1] / 0.8
        p = np.exp(logits - logits.max())
        nxt = int(pick.choice(vocab, p=p / p.sum()))
        out.append(chars[nxt])
        context.append(nxt)
    print("sample after the file's first", T, "characters:")
    print(text[:T] + "".join(out))
    return final, entropy


if __name__ == "__main__":
    loss, h = main()
    sys.exit(0 if loss < 0.6 * h else 1)
