"""The adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015): long-range memory.

Each input step carries a random number in [0, 1) and a marker; two steps are marked, one in each
half of the sequence, and the target is the sum of the two marked numbers, read out after the
last step. Answering 1.0 always scores MSE = Var(U + U') = 1/6 ≈ 0.167 (the baseline); a model
beats it only if it carries the first marked number across ~T/2 steps. Elman tanh RNN, LSTM,
GRU (and MinGRU where fusedrnn has it) are trained for the same budget of steps at each T, and
the gradient flow of each cell on the task (‖∂L/∂h_t‖ for the loss at the last step, from
``fusedrnn.diagnostics.gradient_flow``) is plotted at initialisation and after training.

    python examples/adding_problem.py                 # T = 50, 100, 200, full budget
    python examples/adding_problem.py --quick         # smoke test (~30 s)
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

import _common as C
from fusedrnn.diagnostics import gradient_flow

BASELINE = 1.0 / 6.0


def adding_batch(T: int, B: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x [T, B, 2] (value, marker), y [B]: the sum of the two marked values."""
    values = torch.rand(T, B, generator=gen)
    half = T // 2
    first = torch.randint(0, half, (B,), generator=gen)
    second = torch.randint(half, T, (B,), generator=gen)
    marker = torch.zeros(T, B)
    cols = torch.arange(B)
    marker[first, cols] = 1.0
    marker[second, cols] = 1.0
    y = values[first, cols] + values[second, cols]
    return torch.stack([values, marker], dim=2), y


class Model(nn.Module):
    def __init__(self, cell: str, hidden: int, backend: str):
        super().__init__()
        self.rnn = C.make_layer(cell, 2, hidden, backend)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        y, _ = self.rnn(x)
        return self.head(y[-1]).squeeze(-1)


def flow(model: Model, x, y, label):
    """Gradient flow of the task's own loss (readout + MSE at the last step)."""
    loss_fn = lambda y_t, t: (model.head(y_t).squeeze(-1) - y).pow(2).mean()  # noqa: E731
    return gradient_flow(model.rnn, x, loss_fn=loss_fn, label=label)


def train_one(cell, T, args, test):
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed + T)
    model = Model(cell, args.hidden, args.backend).to(args.device)
    xf, yf = adding_batch(T, args.flow_batch, torch.Generator().manual_seed(7))
    flow0 = flow(model, xf, yf, cell)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    curve = []
    with C.Timer() as tm:
        for step in range(1, args.steps + 1):
            x, y = adding_batch(T, args.batch, gen)
            loss = (model(x.to(args.device)) - y.to(args.device)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            if step % args.eval_every == 0 or step == args.steps:
                with torch.no_grad():
                    mse = float((model(test[0]) - test[1]).pow(2).mean())
                curve.append((step, mse))
    flow1 = flow(model, xf, yf, cell)
    return {"cell": cell, "T": T, "mse": curve[-1][1], "curve": curve, "seconds": tm.s,
            "flow_init": _flow_dict(flow0), "flow_trained": _flow_dict(flow1)}


def _flow_dict(f) -> dict:
    """The part of a GradientFlow the plot and the JSON need."""
    return {"h_grad_norm": f.h_grad_norm.tolist(), "h_decay_rate": _num(f.h_decay_rate)}


def plot(results, Ts, path, title):
    plt = C.pyplot()
    fig, axes = plt.subplots(2, max(len(Ts), 2), figsize=(4.2 * max(len(Ts), 2), 7.5), dpi=70)
    for j, T in enumerate(Ts):
        ax = axes[0, j]
        for r in (r for r in results if r["T"] == T):
            steps, mse = zip(*r["curve"])
            ax.plot(steps, mse, label=f"{r['cell']} ({r['mse']:.2g})")
        ax.axhline(BASELINE, color="gray", ls=":", label="baseline 1/6")
        ax.set_yscale("log")
        ax.set_title(f"adding problem, T={T}")
        ax.set_xlabel("training step")
        ax.set_ylabel("test MSE")
        ax.legend(fontsize=7)
    T = Ts[-1]
    for k, key in enumerate(("flow_init", "flow_trained")):
        ax = axes[1, k]
        for r in (r for r in results if r["T"] == T):
            f = r[key]
            rate = f["h_decay_rate"] if f["h_decay_rate"] is not None else math.nan
            ax.plot([max(v, 1e-45) for v in f["h_grad_norm"]],
                    label=f"{r['cell']} (rate {rate:.3f}/step)")
        ax.set_yscale("log")
        ax.set_title(f"‖∂L/∂h_t‖, T={T}, {'at init' if k == 0 else 'after training'}")
        ax.set_xlabel("time step t (loss at the last step)")
        ax.legend(fontsize=7)
    for ax in [*axes[0, len(Ts):], *axes[1, 2:]]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--T", type=int, nargs="+", default=[50, 100, 200])
    p.add_argument("--cells", nargs="+", default=["tanh", "lstm", "gru", "mingru"])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--flow-batch", type=int, default=32)
    p.add_argument("--test-size", type=int, default=1000)
    p.add_argument("--name", default="adding_problem", help="stem of the output files")
    p.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                   help="only re-plot: merge the JSON files of earlier runs into --name")
    args = p.parse_args(argv)
    if args.quick:
        args.T, args.steps, args.hidden, args.batch, args.eval_every = [20], 15, 16, 16, 5
        args.flow_batch, args.test_size = 8, 200
    out = C.setup(args)
    if args.merge:
        return merge(args.merge, out, args.name)
    print(C.describe(args))
    cells = []
    for cell in args.cells:
        why = C.cell_available(cell, args.backend)
        if why:
            print(f"skipping {cell}: {why}")
        else:
            cells.append(cell)
    results = []
    for T in args.T:
        test = adding_batch(T, args.test_size, torch.Generator().manual_seed(12345 + T))
        test = (test[0].to(args.device), test[1].to(args.device))
        for cell in cells:
            r = train_one(cell, T, args, test)
            results.append(r)
            print(f"T={T:4d} cell={cell:7s} test_mse={r['mse']:.4f} (baseline {BASELINE:.4f}) "
                  f"steps={args.steps} time={r['seconds']:.1f}s "
                  f"h_decay_rate init={r['flow_init']['h_decay_rate']} "
                  f"trained={r['flow_trained']['h_decay_rate']}", flush=True)
            _save(out, args, results)
    png = _save(out, args, results)
    print("metric: " + " ".join(f"mse[T={r['T']},{r['cell']}]={r['mse']:.4f}" for r in results))
    print(f"wrote {png}")


def _stem(args) -> str:
    return args.name + ("_quick" if args.quick else "")


def _save(out, args, results):
    """Write the JSON (after every model, so a long run keeps what it has) and the PNG."""
    (out / f"{_stem(args)}.json").write_text(json.dumps(
        {"args": vars(args), "machine": C.describe(args), "results": results}, indent=1))
    png = out / f"{_stem(args)}.png"
    Ts = sorted({r["T"] for r in results})
    plot(results, Ts, png, f"{args.steps} Adam steps, batch {args.batch}, hidden {args.hidden}"
         f", lr {args.lr}\n{C.describe(args)}")
    return png


def merge(paths, out: Path, name: str):
    """One PNG and JSON from the JSONs of several runs (e.g. one process per T)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    order = list(C.CELLS)  # one order, so each cell keeps its colour in every panel
    results = sorted((r for run in runs for r in run["results"]),
                     key=lambda r: (r["T"], order.index(r["cell"])))
    a = runs[0]["args"]
    (out / f"{name}.json").write_text(json.dumps(
        {"runs": [run["args"] for run in runs], "machine": runs[0]["machine"],
         "results": results}, indent=1))
    png = out / f"{name}.png"
    plot(results, sorted({r["T"] for r in results}), png,
         f"{a['steps']} Adam steps, batch {a['batch']}, hidden {a['hidden']}, lr {a['lr']}"
         f"\n{runs[0]['machine']}")
    print(f"wrote {png}")


def _num(v: float):
    return None if math.isnan(v) else v


if __name__ == "__main__":
    main()
