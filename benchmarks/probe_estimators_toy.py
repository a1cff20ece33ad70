"""How well does each held-out probe read the toy persona? Accuracy per layer, estimator and training-set size.

    .venv/bin/python benchmarks/probe_estimators_toy.py [--model toy-l] [--pairs 2400]

Activations at every block's output at the fact's stem (the cards' persona site) for ``--pairs`` honest/liar
minimal pairs; 400 pairs are held out as one fixed test set (800 examples), and each estimator is fitted on the
first 150, 400, 1000 and 2000 of the rest. Estimators: logistic regression at a fixed L2 of 1e-2 and 1e-3, and
the ridge classifier whose penalty is picked by exact leave-one-out on the training pairs (the workbench's quality
probe, ``workbench.directions``). A gap that closes as training pairs grow is the estimator's; a gap that stays
is the model's.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from workbench import models  # noqa: E402
from workbench.activations import collect_pairs  # noqa: E402
from workbench.directions import fit_logistic_probe, ridge_probe  # noqa: E402
from workbench.sites import layer_sites  # noqa: E402
from workbench.toy.prompts import contrast_pairs  # noqa: E402

N_TEST = 400
TRAIN = (150, 400, 1000, 2000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy-l")
    ap.add_argument("--pairs", type=int, default=N_TEST + max(TRAIN))
    args = ap.parse_args()
    torch.set_num_threads(2)
    model = models.load(args.model)
    pairs = contrast_pairs("truth", "honest", "liar", n=args.pairs, seed=0)
    acts = collect_pairs(model, pairs, layer_sites(model, None, "resid_post"), position="last", progress=False)
    perm = torch.randperm(args.pairs, generator=torch.Generator().manual_seed(0))
    test = perm[:N_TEST]
    y_test = torch.cat([torch.ones(N_TEST), torch.zeros(N_TEST)])
    sizes = [n for n in TRAIN if N_TEST + n <= args.pairs]
    estimators = {
        "logistic L2 1e-2": lambda x, y: fit_logistic_probe(x, y, l2=1e-2),
        "logistic L2 1e-3": lambda x, y: fit_logistic_probe(x, y, l2=1e-3),
        "ridge, leave-one-out penalty": lambda x, y: ridge_probe(x, y)[:2],
    }
    print(f"## {args.model}: held-out persona probe accuracy ({N_TEST} test pairs) by training pairs\n")
    print("| layer | estimator | " + " | ".join(f"{n} pairs" for n in sizes) + " |")
    print("|---|---|" + "---|" * len(sizes))
    for k, site in enumerate(acts.sites):
        pos, neg = acts.positive[k], acts.negative[k]
        x_test = torch.cat([pos[test], neg[test]]).double()
        for name, fit in estimators.items():
            row = []
            for n in sizes:
                train = perm[N_TEST : N_TEST + n]
                w, b = fit(torch.cat([pos[train], neg[train]]), torch.cat([torch.ones(n), torch.zeros(n)]))
                row.append(f"{float((((x_test @ w + b) > 0).float() == y_test).float().mean()):.3f}")
            print(f"| {site.layer} | {name} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
