"""A recurrent policy-gradient agent (PPO, CleanRL-style) on a T-maze: one reset= call per minibatch.

The task needs memory. At the first step of an episode the agent sees a cue, left or right. It
then walks a corridor whose length is drawn per episode (``--corridor``), seeing only "corridor".
At the junction it must turn the way the cue said: reward +1, else -1. The episode then ends
and a new one starts in the same environment. Everything is self-contained torch: no gymnasium.

The agent is an encoder, an LSTM, and policy and value heads. It is trained by PPO on rollouts
of ``--steps`` steps of ``--envs`` environments, so episodes end inside every rollout. It is
trained twice, from the same weights and the same seeds:

* **fused**: ``fusedrnn.LSTM`` and one ``lstm(x, state, reset=done)`` call per minibatch
  (docs/rl.md's recipe);
* **loop**: ``torch.nn.LSTM`` and CleanRL's ``get_states`` loop, one call per step with the state
  masked by ``(1 - done)``.

Both run in float64, so the two updates agree to about 1e-15 and both agents see the same
rollouts and take the same actions. The two learning curves should therefore be the same; the
script prints their largest difference and the largest difference of the final weights. It also
times the update phase (forward, backward and optimiser of every minibatch) of each and prints
the speedup.

    python examples/rl_tmaze.py            # full run, a few minutes on 2 cores
    python examples/rl_tmaze.py --quick    # smoke test, seconds
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn

import _common as C
import fusedrnn

OBS = 4  # [cue left, cue right, corridor, junction]


class TMaze:
    """``n`` T-mazes stepped together; a finished episode restarts at once in its environment."""

    def __init__(self, n: int, corridor: tuple[int, int], gen: torch.Generator):
        self.n, self.lo, self.hi, self.gen = n, corridor[0], corridor[1], gen
        self.cue = torch.zeros(n, dtype=torch.long)
        self.length = torch.zeros(n, dtype=torch.long)
        self.pos = torch.zeros(n, dtype=torch.long)
        self._new(torch.ones(n, dtype=torch.bool))

    def _new(self, which: torch.Tensor) -> None:
        k = int(which.sum())
        self.cue[which] = torch.randint(0, 2, (k,), generator=self.gen)
        self.length[which] = torch.randint(self.lo, self.hi + 1, (k,), generator=self.gen)
        self.pos[which] = 0

    def obs(self) -> torch.Tensor:
        o = torch.zeros(self.n, OBS, dtype=torch.float64)
        start = self.pos == 0
        o[start, self.cue[start]] = 1.0
        o[:, 2] = ((self.pos > 0) & (self.pos < self.length)).double()
        o[:, 3] = (self.pos == self.length).double()
        return o

    def step(self, action: torch.Tensor):
        """-> reward [n], done [n] (the episode ended with this step; obs() is a new one)."""
        at_junction = self.pos == self.length
        reward = torch.where(at_junction, torch.where(action == self.cue, 1.0, -1.0), 0.0)
        self.pos += 1
        self._new(at_junction)
        return reward.double(), at_junction


class Agent(nn.Module):
    def __init__(self, lstm: nn.Module, hidden: int):
        super().__init__()
        self.enc = nn.Linear(OBS, hidden)
        self.lstm = lstm
        self.pi = nn.Linear(hidden, 2)
        self.v = nn.Linear(hidden, 1)

    def get_states(self, x, state, done):
        """x [T, B, OBS], done [T, B] (1 where the step starts a new episode) -> [T, B, H]."""
        h = torch.tanh(self.enc(x))
        if isinstance(self.lstm, fusedrnn.LSTM):  # docs/rl.md: the loop below in one call
            return self.lstm(h, state, reset=done)
        outs = []  # CleanRL's get_states
        for h_t, d in zip(h, done):
            y, state = self.lstm(h_t.unsqueeze(0), ((1.0 - d).view(1, -1, 1) * state[0],
                                                    (1.0 - d).view(1, -1, 1) * state[1]))
            outs.append(y)
        return torch.cat(outs), state

    def heads(self, y):
        return torch.distributions.Categorical(logits=self.pi(y)), self.v(y).squeeze(-1)


def make_agents(args):
    """The same initial weights twice: torch.nn's LSTM (loop) and fusedrnn's (fused)."""
    torch.manual_seed(args.seed)
    loop = Agent(nn.LSTM(args.hidden, args.hidden), args.hidden).double()
    fused = Agent(fusedrnn.LSTM(args.hidden, args.hidden, backend=args.backend), args.hidden)
    fused = fused.double()
    fused.load_state_dict(loop.state_dict())
    return {"fused": fused, "loop": loop}


def train(agent: Agent, args):
    """PPO as CleanRL's ppo_atari_lstm.py (rollout, GAE, epochs of minibatches over whole envs).
    Yields, after every iteration, its success rate and the seconds of its update phase."""
    gen = torch.Generator().manual_seed(args.seed)  # env and action sampling
    env = TMaze(args.envs, tuple(args.corridor), gen)
    opt = torch.optim.Adam(agent.parameters(), lr=args.lr, eps=1e-5)
    H, N, T = args.hidden, args.envs, args.steps
    state = (torch.zeros(1, N, H, dtype=torch.float64), torch.zeros(1, N, H, dtype=torch.float64))
    next_obs, next_done = env.obs(), torch.zeros(N, dtype=torch.float64)
    for _ in range(args.iters):
        start_state = (state[0].clone(), state[1].clone())
        obs = torch.zeros(T, N, OBS, dtype=torch.float64)
        dones, acts, logp, rews, vals = (torch.zeros(T, N, dtype=torch.float64) for _ in range(5))
        wins = eps = 0
        with torch.no_grad():  # rollout: one step at a time for both agents
            for t in range(T):
                obs[t], dones[t] = next_obs, next_done
                y, state = agent.get_states(next_obs[None], state, next_done[None])
                dist, v = agent.heads(y[0])
                a = torch.multinomial(dist.probs, 1, generator=gen).squeeze(1)
                acts[t], logp[t], vals[t] = a, dist.log_prob(a), v
                r, d = env.step(a)
                rews[t], next_obs, next_done = r, env.obs(), d.double()
                wins, eps = wins + int((r > 0).sum()), eps + int(d.sum())
            y, _ = agent.get_states(next_obs[None], state, next_done[None])
            next_v = agent.heads(y[0])[1]
            adv, last = torch.zeros(T, N, dtype=torch.float64), 0.0
            for t in reversed(range(T)):  # GAE; dones[t + 1] ends the episode of step t
                nd = 1.0 - (next_done if t == T - 1 else dones[t + 1])
                nv = next_v if t == T - 1 else vals[t + 1]
                delta = rews[t] + args.gamma * nv * nd - vals[t]
                last = delta + args.gamma * args.lam * nd * last
                adv[t] = last
            ret = adv + vals
        t0 = time.perf_counter()
        for _ in range(args.epochs):  # the update phase: what the two agents do differently
            for mb in torch.randperm(N, generator=gen).split(N // args.minibatches):
                y, _ = agent.get_states(obs[:, mb], (start_state[0][:, mb], start_state[1][:, mb]),
                                        dones[:, mb])
                dist, v = agent.heads(y)
                ratio = (dist.log_prob(acts[:, mb]) - logp[:, mb]).exp()
                a_mb = adv[:, mb]
                a_mb = (a_mb - a_mb.mean()) / (a_mb.std() + 1e-8)
                pg = torch.max(-a_mb * ratio, -a_mb * ratio.clamp(1 - args.clip, 1 + args.clip))
                loss = pg.mean() + 0.5 * (v - ret[:, mb]).pow(2).mean() \
                    - args.ent * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
                opt.step()
        yield wins / max(eps, 1), time.perf_counter() - t0


def main(argv=None):
    p = C.parser(__doc__.splitlines()[0])
    p.add_argument("--envs", type=int, default=16)
    p.add_argument("--steps", type=int, default=128, help="rollout length per iteration")
    p.add_argument("--corridor", type=int, nargs=2, default=[4, 12],
                   help="min and max corridor length (steps between the cue and the junction)")
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--lam", type=float, default=0.95)
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--ent", type=float, default=0.01)
    args = p.parse_args(argv)
    if args.backend == "torch":
        p.error("--backend torch: the loop agent already is torch.nn; pick a fusedrnn backend")
    if args.quick:
        args.envs, args.steps, args.iters, args.hidden, args.epochs = 4, 24, 3, 8, 2
        args.minibatches, args.corridor = 2, [2, 4]
    out = C.setup(args)
    print(C.describe(args))
    agents = make_agents(args)
    res = {name: {"curve": [], "update_s": 0.0} for name in agents}
    wdiffs = []  # the two agents' largest weight difference after every iteration
    runs = {name: train(agent, args) for name, agent in agents.items()}
    for it in range(args.iters):  # in lockstep, so the weights can be compared as they go
        for name, run in runs.items():
            success, secs = next(run)
            res[name]["curve"].append(success)
            res[name]["update_s"] += secs
        wdiffs.append(max(float((a - b).abs().max()) for a, b in zip(
            agents["fused"].state_dict().values(), agents["loop"].state_dict().values())))
        if (it + 1) % max(1, args.iters // 8) == 0:
            print(f"  iteration {it + 1}: success rate {res['fused']['curve'][-1]:.3f} (fused) "
                  f"{res['loop']['curve'][-1]:.3f} (loop), weight difference {wdiffs[-1]:.2g}",
                  flush=True)
    for name in agents:
        print(f"{name:5s}: success rate first {res[name]['curve'][0]:.3f} last "
              f"{res[name]['curve'][-1]:.3f}, update phase {res[name]['update_s']:.2f} s")
    diff = max(abs(a - b) for a, b in zip(res["fused"]["curve"], res["loop"]["curve"]))
    wdiff = wdiffs[-1]
    speedup = res["loop"]["update_s"] / res["fused"]["update_s"]
    last = max(1, len(res["fused"]["curve"]) // 10)
    final = sum(res["fused"]["curve"][-last:]) / last
    print(f"largest curve difference {diff:.3g}, largest final-weight difference {wdiff:.3g}")
    print(f"update phase: loop {res['loop']['update_s']:.2f} s, fused "
          f"{res['fused']['update_s']:.2f} s, speedup {speedup:.1f}x")

    suffix = "_quick" if args.quick else ""
    plt = C.pyplot()
    fig, (a1, a3, a2) = plt.subplots(1, 3, figsize=(14, 3.8), dpi=70,
                                     gridspec_kw={"width_ratios": [3, 1.6, 1]})
    it = range(1, args.iters + 1)
    a1.plot(it, res["loop"]["curve"], lw=4, alpha=0.4, color="C0",
            label="torch.nn.LSTM, CleanRL per-step loop")
    a1.plot(it, res["fused"]["curve"], lw=1.2, color="C1", ls="--",
            label="fusedrnn.LSTM, one reset= call per minibatch")
    a1.axhline(0.5, color="gray", lw=0.5, ls=":")
    a1.set_xlabel("PPO iteration")
    a1.set_ylabel("success rate (episodes of the rollout)")
    a1.set_title(f"T-maze, corridor {args.corridor[0]}-{args.corridor[1]}: same seeds, float64; "
                 f"largest curve difference {diff:.2g}", fontsize=9)
    a1.legend(fontsize=7)
    a3.semilogy(it, [max(w, 1e-17) for w in wdiffs], color="k")
    a3.set_xlabel("PPO iteration")
    a3.set_title("largest weight difference, fused vs loop", fontsize=9)
    a2.bar([0, 1], [res["loop"]["update_s"], res["fused"]["update_s"]], color=["C0", "C1"])
    a2.set_xticks([0, 1], ["loop", "reset="])
    a2.set_title(f"update phase wall time (s): {speedup:.1f}x", fontsize=9)
    fig.tight_layout()
    png = out / f"rl_tmaze{suffix}.png"
    fig.savefig(png)
    plt.close(fig)
    (out / f"rl_tmaze{suffix}.json").write_text(json.dumps(
        {"args": vars(args), "machine": C.describe(args), "results": res,
         "largest_curve_difference": diff, "largest_weight_difference": wdiff,
         "weight_difference_per_iteration": wdiffs,
         "update_speedup": speedup}, indent=1))
    print(f"metric: final_success={final:.3f} curve_diff={diff:.3g} weight_diff={wdiff:.3g} "
          f"update_speedup={speedup:.2f}x")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
