"""Seq2seq date-format translation: "21 November 2026" -> "2026-11-21".

Source dates are written in a dozen human formats generated with ``datetime`` (``strftime``),
character by character; the target is the ISO date. Four ``fusedrnn.models.Seq2Seq`` GRU models
are trained for the same number of steps: with and without Luong attention, and with teacher
forcing (ratio 1.0: the decoder reads the true previous character) or without it (ratio 0.0:
free running, it reads its own prediction). The metric is exact-match accuracy of greedy decoding
on held-out dates (and beam search for the last model).

    python examples/seq2seq_dates.py            # full run
    python examples/seq2seq_dates.py --quick    # smoke test
"""

from __future__ import annotations

import datetime as dt
import json
import random

import torch

import _common as C
from fusedrnn.models import Seq2Seq

FORMATS = ["%d %B %Y", "%B %d, %Y", "%d %b %Y", "%b %d %Y", "%A, %d %B %Y", "%a %d %b %Y",
           "%d.%m.%Y", "%m/%d/%Y", "%Y %B %d", "%B %-d, %Y", "%-d %B %Y", "%d %B, %Y"]
PAD, BOS, EOS = 0, 1, 2
START, DAYS = dt.date(1900, 1, 1), 200 * 366


def random_pairs(n: int, rng: random.Random) -> list[tuple[str, str]]:
    """n (human, ISO) date pairs; a third of the human forms are lower-cased."""
    pairs = []
    for _ in range(n):
        d = START + dt.timedelta(days=rng.randrange(DAYS))
        s = d.strftime(rng.choice(FORMATS))
        pairs.append((s.lower() if rng.random() < 0.33 else s, d.isoformat()))
    return pairs


class Vocab:
    def __init__(self, chars):
        self.itos = ["<pad>", "<bos>", "<eos>", *sorted(set(chars))]
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    def encode(self, strings, eos: bool):
        """Padded ids [B, L] and lengths [B]."""
        seqs = [[self.stoi[c] for c in s] + ([EOS] if eos else []) for s in strings]
        lengths = torch.tensor([len(s) for s in seqs])
        out = torch.full((len(seqs), int(lengths.max())), PAD)
        for i, s in enumerate(seqs):
            out[i, : len(s)] = torch.tensor(s)
        return out, lengths

    def decode(self, ids) -> str:
        chars = []
        for i in ids.tolist():
            if i == EOS:
                break
            if i != PAD:
                chars.append(self.itos[i])
        return "".join(chars)


def accuracy(model, pairs, sv, tv, beam: int = 0) -> float:
    model.eval()
    src, lengths = sv.encode([p[0] for p in pairs], eos=False)
    if beam:
        pred = model.beam_decode(src, lengths, max_len=12, beam_width=beam)
    else:
        pred = model.greedy_decode(src, lengths, max_len=12)
    model.train()
    return sum(tv.decode(row) == p[1] for row, p in zip(pred, pairs)) / len(pairs)


def train(attention, ratio, data, test, sv, tv, args):
    torch.manual_seed(args.seed)
    model = Seq2Seq(len(sv.itos), len(tv.itos), args.emb, args.hidden, cell="GRU",
                    attention=attention, pad_id=PAD, bos_id=BOS, eos_id=EOS,
                    layer_kwargs=None if args.backend == "torch" else {"backend": args.backend})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve = []
    rng = random.Random(args.seed)
    with C.Timer() as tm:
        for step in range(1, args.steps + 1):
            batch = rng.sample(data, args.batch)
            src, lengths = sv.encode([b[0] for b in batch], eos=False)
            tgt, _ = tv.encode([b[1] for b in batch], eos=True)
            loss = model.loss(model(src, lengths, tgt, teacher_forcing_ratio=ratio), tgt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if step % args.eval_every == 0 or step == args.steps:
                curve.append((step, loss.item(), accuracy(model, test[: args.curve_size], sv, tv)))
    acc = accuracy(model, test, sv, tv)
    return model, {"attention": attention, "teacher_forcing_ratio": ratio, "exact_match": acc,
                   "curve": curve, "seconds": tm.s}


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--emb", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-size", type=int, default=20000)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--curve-size", type=int, default=200, help="test dates per curve point")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--beam", type=int, default=4)
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batch, args.hidden, args.emb = 30, 32, 32, 16
        args.train_size, args.test_size, args.curve_size, args.eval_every = 2000, 100, 50, 15
    if args.backend == "torch":
        print("note: the Seq2Seq model is built on fusedrnn layers; --backend torch means 'auto'")
        args.backend = "auto"
    out = C.setup(args)
    print(C.describe(args))
    rng = random.Random(args.seed)
    data = random_pairs(args.train_size, rng)
    seen = {d for d, _ in data}
    test = [p for p in random_pairs(3 * args.test_size, rng) if p[0] not in seen][: args.test_size]
    sv = Vocab("".join(s for s, _ in data + test))
    tv = Vocab("0123456789-")
    print(f"examples: {data[0]} {data[1]} {data[2]}; train {len(data)}, test {len(test)} unseen")
    results, models = [], {}
    for attention in (None, "general"):
        for ratio in (1.0, 0.0):
            model, r = train(attention, ratio, data, test, sv, tv, args)
            models[(attention, ratio)] = model
            results.append(r)
            print(f"attention={str(attention):8s} teacher_forcing={ratio:.1f} "
                  f"exact_match={r['exact_match']:.3f} time={r['seconds']:.1f}s", flush=True)
    best = models[("general", 1.0)]
    beam_acc = accuracy(best, test, sv, tv, beam=args.beam)
    print(f"attention=general teacher_forcing=1.0 beam={args.beam} exact_match={beam_acc:.3f}")
    src, lengths = sv.encode([test[0][0]], eos=False)
    tgt, _ = tv.encode([test[0][1]], eos=True)
    best.eval()
    with torch.no_grad():
        attn = best(src, lengths, tgt).attention[0]  # [T, S]

    plt = C.pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), dpi=70)
    labels = [f"{'attn' if r['attention'] else 'no attn'}\nTF={r['teacher_forcing_ratio']:.0f}"
              for r in results]
    axes[0].bar(range(len(results)), [r["exact_match"] for r in results], color="C0")
    axes[0].set_xticks(range(len(results)), labels, fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[0].set_title(f"exact match, greedy (beam {args.beam}, attn TF=1: {beam_acc:.3f})",
                      fontsize=9)
    for r, lab in zip(results, labels):
        s, _, acc = zip(*r["curve"])
        axes[1].plot(s, acc, label=lab.replace("\n", ", "))
    axes[1].set_xlabel("training step")
    axes[1].set_ylabel(f"exact match ({args.curve_size} test dates)")
    axes[1].legend(fontsize=7)
    axes[2].imshow(attn.numpy(), cmap="viridis", aspect="auto")
    axes[2].set_xticks(range(len(test[0][0])), list(test[0][0]), fontsize=7)
    axes[2].set_yticks(range(len(test[0][1]) + 1), list(test[0][1]) + ["<eos>"], fontsize=7)
    axes[2].set_title("attention weights (teacher-forced)", fontsize=9)
    fig.tight_layout()
    suffix = "_quick" if args.quick else ""
    png = out / f"seq2seq_dates{suffix}.png"
    fig.savefig(png)
    plt.close(fig)
    (out / f"seq2seq_dates{suffix}.json").write_text(json.dumps(
        {"args": vars(args), "machine": C.describe(args), "results": results,
         "beam_exact_match": beam_acc}, indent=1))
    print("metric: " + " ".join(
        f"exact_match[attn={r['attention']},tf={r['teacher_forcing_ratio']:.0f}]="
        f"{r['exact_match']:.4f}" for r in results) + f" beam{args.beam}={beam_acc:.4f}")
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
