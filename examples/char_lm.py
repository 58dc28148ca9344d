"""Character-level language model on the Python documentation shipped with every Python.

The corpus is the text of ``pydoc_data.topics`` (the help() topics of the standard library,
~465k characters). It is cut into B parallel streams and an LSTM is trained statefully with
truncated BPTT (``fusedrnn.training.TBPTT``): the state runs on across chunks, the gradient is
cut at each chunk boundary. The metric is validation bits per character on the held-out last
10% of the text (a unigram model scores its entropy, printed for scale); text is then sampled
with temperature.

    python examples/char_lm.py            # full run
    python examples/char_lm.py --quick    # smoke test
"""

from __future__ import annotations

import json
import math
import textwrap
import time

import pydoc_data.topics
import torch
import torch.nn.functional as F
from torch import nn

import _common as C
from fusedrnn.training import TBPTT


def corpus() -> str:
    return "\n".join(pydoc_data.topics.topics[k] for k in sorted(pydoc_data.topics.topics))


def streams(ids: torch.Tensor, B: int) -> torch.Tensor:
    """[N] -> [N // B, B]: B contiguous strips of the text, side by side."""
    n = ids.numel() // B
    return ids[: n * B].view(B, n).t().contiguous()


class CharLM(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int, layers: int, backend: str):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb)
        self.rnn = C.make_layer("lstm", emb, hidden, backend, num_layers=layers)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, state=None):
        """x [T, B] -> (logits [T, B, V], state)."""
        y, state = self.rnn(self.emb(x), state)
        return self.head(y), state


def bits_loss(logits, targets):
    """Mean cross entropy in bits per character."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten()) / math.log(2)


@torch.no_grad()
def sample(model, stoi, itos, prompt: str, n: int, temperature: float, gen) -> str:
    model.eval()
    x = torch.tensor([[stoi[c] for c in prompt]]).t()  # [T, 1]
    logits, state = model(x)
    out = []
    for _ in range(n):
        p = torch.softmax(logits[-1, 0] / temperature, -1)
        c = int(torch.multinomial(p, 1, generator=gen))
        out.append(itos[c])
        logits, state = model(torch.tensor([[c]]), state)
    model.train()
    return prompt + "".join(out)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (= chunks)")
    p.add_argument("--chunk", type=int, default=100, help="TBPTT truncation length")
    p.add_argument("--batch", type=int, default=32, help="parallel streams")
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--emb", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-chars", type=int, default=None, help="limit validation text")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.chunk, args.batch, args.hidden, args.emb = 60, 25, 16, 64, 16
        args.eval_every, args.val_chars = 20, 4000
    out = C.setup(args)
    print(C.describe(args))
    text = corpus()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = torch.tensor([stoi[c] for c in text])
    split = int(0.9 * ids.numel())
    train, val = ids[:split], ids[split:]
    if args.val_chars:
        val = val[: args.val_chars]
    counts = torch.bincount(train, minlength=len(chars)).double()
    pr = counts[counts > 0] / counts.sum()
    unigram = float(-(pr * pr.log2()).sum())
    print(f"corpus: {len(text)} chars, vocab {len(chars)}, train {train.numel()}, "
          f"val {val.numel()}, unigram entropy {unigram:.3f} bits/char")

    model = CharLM(len(chars), args.emb, args.hidden, args.layers, args.backend).to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    tbptt = TBPTT(model, bits_loss, opt, chunk_len=args.chunk, grad_clip=1.0)
    tr = streams(train, args.batch)  # [N, B]
    vs = streams(val, 4)

    def validate() -> float:
        model.eval()
        ev = TBPTT(model, bits_loss, None, chunk_len=args.chunk)
        bpc = ev.evaluate(vs[:-1], vs[1:])
        model.train()
        return bpc

    history, pos, done = [], 0, 0
    with C.Timer() as tm:
        while done < args.steps:
            n_chunks = min(args.eval_every, args.steps - done)
            span = n_chunks * args.chunk
            if pos + span + 1 > tr.size(0):  # wrapped around the text: start the streams afresh
                pos = 0
                tbptt.reset()
            losses = tbptt.train(tr[pos:pos + span], tr[pos + 1:pos + span + 1])
            pos += span
            done += n_chunks
            bpc = validate()
            history.append((done, sum(losses) / len(losses), bpc))
            print(f"step {done:5d} train_bpc {history[-1][1]:.3f} val_bpc {bpc:.3f} "
                  f"({time.perf_counter() - tm.t0:.0f}s)", flush=True)
    gen = torch.Generator().manual_seed(args.seed)
    n_sample = 80 if args.quick else 400
    samples = {t: sample(model, stoi, itos=chars, prompt="The ", n=n_sample, temperature=t,
                         gen=gen) for t in (0.5, 1.0)}
    for t, s in samples.items():
        print(f"--- sample, temperature {t} ---\n{s}\n")
    val_bpc = history[-1][2]
    suffix = "_quick" if args.quick else ""
    plt = C.pyplot()
    fig = plt.figure(figsize=(8, 6.5), dpi=70)
    ax = fig.add_axes([0.1, 0.45, 0.85, 0.48])
    steps, trb, vab = zip(*history)
    ax.plot(steps, trb, label="train (chunk mean)")
    ax.plot(steps, vab, label=f"validation ({val_bpc:.3f})")
    ax.axhline(unigram, color="gray", ls=":", label=f"unigram entropy {unigram:.2f}")
    ax.set_xlabel("optimizer step (one TBPTT chunk each)")
    ax.set_ylabel("bits per character")
    ax.set_title(f"char LSTM on pydoc_data.topics: H={args.hidden}, chunk {args.chunk}, "
                 f"B={args.batch}, {tm.s:.0f}s", fontsize=9)
    ax.legend(fontsize=8)
    shown = "\n".join(textwrap.wrap(samples[0.5].replace("\n", " ")[:540], 90)[:6])
    fig.text(0.05, 0.33, f"sample, temperature 0.5:\n{shown}", fontsize=8, va="top",
             family="monospace")
    png = out / f"char_lm{suffix}.png"
    fig.savefig(png)
    plt.close(fig)
    (out / f"char_lm{suffix}.json").write_text(json.dumps(
        {"args": vars(args), "machine": C.describe(args), "unigram_bpc": unigram,
         "history": history, "seconds": tm.s, "samples": samples}, indent=1))
    print(f"metric: val_bpc={val_bpc:.4f} unigram_bpc={unigram:.4f} time={tm.s:.1f}s")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
