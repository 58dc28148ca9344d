"""Time-series forecasting on real data bundled with statsmodels (no network needed).

Needs the optional extra statsmodels:  pip install statsmodels
(without it this example prints how to install it and exits without running).

Dataset: yearly sunspot numbers 1700-2008 (``statsmodels.datasets.sunspots``, 309 values), or
``--dataset co2``: weekly Mauna Loa CO2 1958-2001 (gaps interpolated), resampled monthly.
The series is standardised on its first 80% (train) and forecast ``--horizon`` steps ahead from
a window of ``--window`` past values by a GRU with two heads:

* many-to-one: the last hidden state -> the value ``horizon`` steps after the window;
* many-to-many: every hidden state h_t -> x_{t+horizon}, trained on all steps of the window
  (more training signal per window); evaluated on its last step, like many-to-one.

Both are compared with the naive last-value forecast x_{t+h} = x_t on the test years (the last
20%), by RMSE in the data's own units.

    python examples/timeseries.py             # sunspots, full run
    python examples/timeseries.py --quick     # smoke test
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

import _common as C

INSTALL = "pip install statsmodels"


def load(name: str) -> tuple[torch.Tensor, str]:
    """The series as float64 [N] and a description; raises ImportError without statsmodels."""
    import statsmodels.api as sm

    if name == "sunspots":
        df = sm.datasets.sunspots.load_pandas().data
        return torch.tensor(df["SUNACTIVITY"].to_numpy(), dtype=torch.float64), \
            f"yearly sunspot number {int(df['YEAR'].iloc[0])}-{int(df['YEAR'].iloc[-1])}"
    if name == "co2":
        s = sm.datasets.co2.load_pandas().data["co2"].interpolate().resample("MS").mean()
        return torch.tensor(s.to_numpy(), dtype=torch.float64), "monthly Mauna Loa CO2 (ppm)"
    raise ValueError(f"--dataset must be sunspots or co2, got {name!r}")


def windows(z: torch.Tensor, window: int, horizon: int, first_target: int, last_target: int):
    """All windows whose final target index lies in [first_target, last_target].

    Returns x [W, N, 1] (time-major), y_all [W, N] (x_{t+h} for every step t of the window),
    and the target indices [N].
    """
    ends = torch.arange(max(first_target, window - 1 + horizon), last_target + 1)
    starts = ends - horizon - window + 1
    idx = starts.unsqueeze(0) + torch.arange(window).unsqueeze(1)  # [W, N]
    return z[idx].unsqueeze(-1).float(), z[idx + horizon].float(), ends


class Forecaster(nn.Module):
    def __init__(self, hidden: int, backend: str):
        super().__init__()
        self.rnn = C.make_layer("gru", 1, hidden, backend)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        """x [W, N, 1] -> predictions for every step [W, N]."""
        y, _ = self.rnn(x)
        return self.head(y).squeeze(-1)


def fit(kind: str, train, args) -> Forecaster:
    torch.manual_seed(args.seed)
    model = Forecaster(args.hidden, args.backend)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    x, y_all, _ = train
    gen = torch.Generator().manual_seed(args.seed)
    for _ in range(args.epochs):
        for idx in torch.randperm(x.size(1), generator=gen).split(args.batch):
            pred = model(x[:, idx])
            if kind == "many-to-one":
                loss = (pred[-1] - y_all[-1, idx]).pow(2).mean()
            else:
                loss = (pred - y_all[:, idx]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    return model


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--dataset", default="sunspots", choices=["sunspots", "co2"])
    p.add_argument("--window", type=int, default=24)
    p.add_argument("--horizon", type=int, default=1)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--epochs", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    args = p.parse_args(argv)
    if args.quick:
        args.epochs, args.hidden = 8, 16
    out = C.setup(args)
    print(C.describe(args))
    try:
        series, what = load(args.dataset)
    except ImportError:
        print(f"SKIPPED: this example needs statsmodels for its bundled datasets; "
              f"install it with:  {INSTALL}")
        return 0
    N = series.numel()
    split = int(0.8 * N)
    mean, std = series[:split].mean(), series[:split].std()
    z = (series - mean) / std
    train = windows(z, args.window, args.horizon, 0, split - 1)
    test = windows(z, args.window, args.horizon, split, N - 1)
    print(f"data: {what}, {N} values; train targets < {split}, test targets {split}..{N - 1} "
          f"({test[2].numel()} forecasts, horizon {args.horizon}, window {args.window})")
    unscale = lambda v: v.double() * std + mean  # noqa: E731
    truth = series[test[2]]
    rmse = lambda pred: float((unscale(pred) - truth).pow(2).mean().sqrt())  # noqa: E731
    preds = {"naive last value": test[0][-1, :, 0]}
    with C.Timer() as tm:
        for kind in ("many-to-one", "many-to-many"):
            model = fit(kind, train, args)
            with torch.no_grad():
                preds[kind] = model(test[0])[-1]
    scores = {k: rmse(v) for k, v in preds.items()}
    for k, v in scores.items():
        print(f"test RMSE {k:16s} {v:.3f}")

    suffix = "_quick" if args.quick else ""
    plt = C.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), dpi=70,
                                 gridspec_kw={"width_ratios": [3, 1]})
    a1.plot(range(N), series.tolist(), color="lightgray", label="series")
    for k, v in preds.items():
        a1.plot(test[2].tolist(), unscale(v).tolist(), label=f"{k} (RMSE {scores[k]:.2f})",
                ls=":" if k.startswith("naive") else "-")
    a1.axvline(split, color="k", lw=0.5)
    a1.set_xlabel("index in the series (train | test)")
    a1.set_title(f"{what}: {args.horizon}-step forecasts on the test part", fontsize=9)
    a1.legend(fontsize=7)
    a2.bar(range(len(scores)), list(scores.values()), color=["gray", "C1", "C2"])
    a2.set_xticks(range(len(scores)), ["naive", "m-to-1", "m-to-m"])
    a2.set_title("test RMSE", fontsize=9)
    fig.tight_layout()
    png = out / f"timeseries{suffix}.png"
    fig.savefig(png)
    plt.close(fig)
    (out / f"timeseries{suffix}.json").write_text(json.dumps(
        {"args": vars(args), "machine": C.describe(args), "data": what, "rmse": scores,
         "seconds": tm.s}, indent=1))
    print("metric: " + " ".join(f"rmse[{k.replace(' ', '_')}]={v:.4f}" for k, v in scores.items())
          + f" time={tm.s:.1f}s")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
