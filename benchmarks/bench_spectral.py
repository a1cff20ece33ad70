"""A forward pass with SEA on every edited layer vs the plain forward (target <= 1.15x at k <= d_model / 8).

SEA edits the MLP output of every block (the official default edits the last L; all is the worst case)
with k+ = k- = d_model / 8 in the paper's ``norm`` combine (the costliest mode: two rank-k projections, two norms
per token). The comparison also shows what a dense d x d application would cost (the factors avoid it).
"""

import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from _common import SIZE, bench_model, header, interleaved  # noqa: E402

from workbench.hooks import applied  # noqa: E402
from workbench.interventions import SpectralEdit  # noqa: E402
from workbench.sites import HookSite  # noqa: E402

BATCH, SEQ = 8, 128


def main() -> None:
    model = bench_model()
    d, n = SIZE["d_model"], SIZE["n_layers"]
    k = d // 8
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g))
    edits = [SpectralEdit(HookSite(layer, "mlp_out"), q[:, :k], q[:, k : 2 * k], combine="norm") for layer in range(n)]
    tokens = torch.randint(4, model.cfg.d_vocab, (BATCH, SEQ), generator=g)

    class Dense:  # the same edit as two dense d x d matrices, for reference
        def __init__(self, e: SpectralEdit) -> None:
            self.e = e
            self.pp = e.u_pos @ e.u_pos.T
            self.pn = torch.eye(d) - e.u_neg @ e.u_neg.T

        def to_hooks(self, model, layout=None):
            def f(x, hook):
                y = x @ self.pp + x @ self.pn
                return y * x.norm(dim=-1, keepdim=True) / y.norm(dim=-1, keepdim=True)

            return [(self.e.site.name, f)]

    def plain():
        with torch.no_grad():
            model(tokens)

    def sea():
        with torch.no_grad(), applied(model, *edits):
            model(tokens)

    def dense():
        with torch.no_grad(), applied(model, *[Dense(e) for e in edits]):
            model(tokens)

    t = interleaved({"plain": plain, "sea": sea, "dense": dense})
    header(f"SEA forward, {len(edits)} of {n} layers edited (mlp_out), k+ = k- = {k}, batch {BATCH} x {SEQ}", model)
    print(f"plain forward     {t['plain'] * 1000:8.1f} ms")
    print(f"SEA (rank-k)      {t['sea'] * 1000:8.1f} ms")
    print(f"SEA (dense d x d) {t['dense'] * 1000:8.1f} ms")
    print(
        f"ratio sea/plain = {t['sea'] / t['plain']:.3f}x  (target <= 1.15x); dense/plain = "
        f"{t['dense'] / t['plain']:.3f}x"
    )


if __name__ == "__main__":
    main()
