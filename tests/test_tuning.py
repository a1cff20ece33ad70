"""Representation tuning (analyses/tuning.py): cosine goes up, routing and freezing hold, the checkpoint reloads, and
each piece of the seed recipe matches a transcription of the authors' code (custom_fine_tune.ipynb, cell 5)."""

import json
import math
from dataclasses import replace

import pytest
import torch

from analyses import tuning
from analyses.common import fact_items
from tests.conftest import BACKEND
from workbench import models
from workbench.errors import WorkbenchError
from workbench.toy import checkpoint_dir
from workbench.toy.measure import directions_for


@pytest.fixture(scope="module")
def setup():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tl = models.load("toy-s", backend=BACKEND)
    ds = directions_for(tl, "truth", "liar", "honest", n_pairs=60)
    vectors = {layer: ds.at(layer).vector / ds.at(layer).vector.norm() for layer in (1, 2)}
    items = [(t, h) for t, h, _, _ in fact_items(80, None, 5)]
    src = checkpoint_dir("toy-s")

    def fresh():
        return (
            AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32),
            AutoTokenizer.from_pretrained(str(src)),
        )

    return fresh, vectors, items


def _cos(hf, tok, items, vectors, cfg):
    with torch.no_grad():
        return tuning.losses(hf, tuning.encode_items(tok, items, "cpu"), vectors, cfg)[2]


def _changed(hf, before):
    return {k for k, v in hf.state_dict().items() if not torch.equal(v, before[k])}


def test_intended_routing_raises_cosine_and_touches_only_v_and_o(setup):
    fresh, vectors, items = setup
    hf, tok = fresh()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    cfg = tuning.recipe("ours", projection=True, layers=(1, 2), token_weight=0.0, max_steps=12, eval_every=4)
    cfg = replace(cfg, patience=50, batch_size=8)
    cos0 = _cos(hf, tok, items[60:], vectors, cfg)
    tuning.tune(hf, tok, items[:60], items[60:], vectors, cfg)
    assert _cos(hf, tok, items[60:], vectors, cfg) > cos0 + 0.05
    changed = _changed(hf, before)
    assert changed and all(".self_attn.v_proj." in k or ".self_attn.o_proj." in k for k in changed)
    assert all(k.startswith(("model.layers.1.", "model.layers.2.")) for k in changed)


def test_seed_code_routing_lets_the_projection_loss_train_every_tuned_weight(setup):
    fresh, vectors, items = setup
    hf, tok = fresh()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    cfg = tuning.TuneConfig(layers=(1,), token_weight=0.0, weight_decay=0.0, max_steps=6, warmup_steps=1)
    out = tuning.tune(hf, tok, items[:60], items[60:], vectors, cfg)
    changed = _changed(hf, before)
    assert any(".mlp." in k for k in changed) and any(".self_attn.q_proj." in k for k in changed)
    assert all(k.startswith("model.layers.1.") for k in changed)
    assert out["tune_config"]["routing"] == "seed-code" and out["steps"] == 6


def _seed_grads(hf, batch, vectors, cfg, vo, rest, zero):
    """The seed's two backward passes with its zero-grad hooks: ``disable_grad`` returns None (``zero=False``, as the
    code runs) or, as intended, zeros. Token loss first with hooks on (projection params - token params), which is
    empty, then the projection loss with hooks on (token params - projection params) = every non-v/o weight."""
    for p in vo + rest:
        p.grad = None
    proj, tok_loss, _ = tuning.losses(hf, batch, vectors, cfg)

    def disable_grad():
        return (lambda g: torch.zeros_like(g)) if zero else (lambda g: None)

    tok_params, proj_params = set(vo + rest), set(vo)
    handles = [p.register_hook(disable_grad()) for p in proj_params - tok_params]
    (tok_loss / 100).backward(retain_graph=True)
    for h in handles:
        h.remove()
    handles = [p.register_hook(disable_grad()) for p in tok_params - proj_params]
    proj.backward()
    for h in handles:
        h.remove()
    return [None if p.grad is None else p.grad.clone() for p in vo + rest]


@pytest.mark.parametrize("routing", ["seed-code", "intended"])
def test_routed_gradients_match_the_seed_hooks(setup, routing):
    fresh, vectors, items = setup
    hf, tok = fresh()
    cfg = tuning.recipe("seed", projection=True, routing=routing, layers=(1, 2))
    blocks = [hf.model.layers[i] for i in cfg.layers]
    vo = [p for b in blocks for p in (*b.self_attn.v_proj.parameters(), *b.self_attn.o_proj.parameters())]
    rest = [p for b in blocks for p in b.parameters() if all(p is not q for q in vo)]
    for p in hf.parameters():
        p.requires_grad_(False)
    for p in vo + rest:
        p.requires_grad_(True)
    batch = tuning.encode_items(tok, items[:8], "cpu")
    want = _seed_grads(hf, batch, vectors, cfg, vo, rest, zero=routing == "intended")
    proj, tok_loss, _ = tuning.losses(hf, batch, vectors, cfg)
    got = tuning.routed_grads(proj, tok_loss, vo, rest, cfg)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-7, rtol=1e-5)
    assert float(torch.stack([g.abs().max() for g in got[len(vo) :]]).max()) > 0  # the token loss reaches the rest
    if routing == "seed-code":  # ... and so does the projection loss, unlike the intended routing
        g_tok = torch.autograd.grad(tuning.losses(hf, batch, vectors, cfg)[1] / 100, rest)
        assert any(not torch.allclose(g, t) for g, t in zip(got[len(vo) :], g_tok))


def test_token_loss_is_the_seeds_outputs_loss_over_100(setup):
    """Seed: ``outputs.loss / 100`` with labels -100 on the prompt and the label token appended."""
    fresh, vectors, items = setup
    hf, tok = fresh()
    cfg = tuning.recipe("seed", projection=True, layers=(1,))
    assert cfg.token_weight == 0.01 and tuning.recipe("seed", projection=False).token_weight == 1.0
    _, tok_loss, _ = tuning.losses(hf, tuning.encode_items(tok, items[:6], "cpu"), vectors, cfg)
    seed = []
    with torch.no_grad():
        for text, answer in items[:6]:
            prompt = [tok.bos_token_id] + tok.encode(text, add_special_tokens=False)
            label = tok.encode(answer, add_special_tokens=False)[:1]
            ids = torch.tensor([prompt + label])
            seed.append(hf(input_ids=ids, labels=torch.tensor([[-100] * len(prompt) + label])).loss)
    torch.testing.assert_close(cfg.token_weight * tok_loss.detach(), torch.stack(seed).mean() / 100)


def test_linear_warmup_schedule_is_transformers(setup):
    from transformers import get_linear_schedule_with_warmup

    cfg = tuning.TuneConfig()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = get_linear_schedule_with_warmup(optimizer=opt, num_warmup_steps=10, num_training_steps=45)
    for step in range(50):
        assert tuning.lr_factor(cfg, step, 45) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-12), step
        opt.step()
        sched.step()
    assert tuning.lr_factor(replace(cfg, schedule="constant"), 3, 45) == 1.0


def _seed_loop(val_losses, per_epoch, avg_over=20, patience=10, min_batches=80):
    """Transcription of the seed's early-stopping block; returns the (epoch, i) it stops at, or None."""

    def avg_last(values, n):
        n = min(n, len(values))
        return sum(values[-n:]) / n

    best_loss, batches_no_improve, seen, k = float("inf"), 0, [], 0
    for epoch in range(3):
        for i in range(per_epoch):
            seen.append(val_losses[k])
            k += 1
            if i < avg_over and epoch == 0:
                continue
            if avg_last(seen, avg_over) < best_loss:
                best_loss = avg_last(seen, avg_over)
                batches_no_improve = 0
            elif avg_last(seen, avg_over) >= best_loss:
                batches_no_improve += 1
            if batches_no_improve >= patience and (i > min_batches or epoch > 0):
                return epoch, i
    return None


@pytest.mark.parametrize("per_epoch", [37, 150])
def test_seed_early_stopping_matches_the_notebook(per_epoch):
    g = torch.Generator().manual_seed(per_epoch)
    t = torch.arange(3 * per_epoch)
    curve = ((1 - t / 40).clamp_min(0.2) + 0.05 * torch.rand(3 * per_epoch, generator=g)).tolist()  # then a plateau
    want = _seed_loop(curve, per_epoch)
    rule, got, k = tuning._SeedStopping(tuning.TuneConfig()), None, 0
    for epoch in range(3):
        for i in range(per_epoch):
            if rule.update(epoch, i, curve[k]):
                got = (epoch, i)
                break
            k += 1
        if got:
            break
    assert got == want and want is not None


def test_recipes_and_bad_configs():
    seed_tok = tuning.recipe("seed", projection=False, layers=(1,))
    assert (seed_tok.lr_vo, seed_tok.batch_size, seed_tok.weight_decay) == (seed_tok.lr_rest, 2, 0.1)
    dual = tuning.recipe("seed", projection=True)
    assert dual.lr_vo == 10 * dual.lr_rest and dual.schedule == "linear-warmup" and dual.stopping == "seed"
    ours = tuning.recipe("ours", projection=False)
    assert (ours.token_weight, ours.weight_decay, ours.lr_vo, ours.max_steps) == (1.0, 0.0, 1e-3, 200)
    with pytest.raises(WorkbenchError, match="recipe must be one of seed, ours"):
        tuning.recipe("paper", projection=True)
    with pytest.raises(WorkbenchError, match="routes as intended"):
        tuning.recipe("ours", projection=True, routing="seed-code")
    with pytest.raises(WorkbenchError, match="TuneConfig's fields are"):
        tuning.recipe("seed", projection=True, lr=1.0)
    with pytest.raises(WorkbenchError, match="routing must be one of"):
        tuning.TuneConfig(routing="both")
    with pytest.raises(WorkbenchError, match="set epochs or max_steps"):
        tuning.TuneConfig(epochs=None)
    with pytest.raises(WorkbenchError, match="weight_decay must be a finite number"):
        tuning.TuneConfig(weight_decay=math.nan)
    with pytest.raises(WorkbenchError, match="recipes must list distinct values among seed, ours"):
        tuning.Config(recipes=("seed", "seed"))
    with pytest.raises(WorkbenchError, match="routings must list distinct values"):
        tuning.Config(routings=())


def test_tune_refuses_bad_layers_and_too_few_items(setup):
    fresh, vectors, items = setup
    hf, tok = fresh()
    with pytest.raises(WorkbenchError, match=r"must be 0-based blocks of this model \(0\.\.3\)"):
        tuning.tune(hf, tok, items[:8], items[8:16], vectors, tuning.TuneConfig(layers=(1, 9)))
    with pytest.raises(WorkbenchError, match="need at least batch_size"):
        tuning.tune(hf, tok, items[:3], items[3:5], vectors, tuning.TuneConfig(layers=(1,)))


def test_token_loss_trains_whole_layers_and_freezes_the_rest(setup, tmp_path):
    fresh, vectors, items = setup
    hf, tok = fresh()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    cfg = tuning.recipe("seed", projection=False, layers=(2,), max_steps=8, warmup_steps=1)
    tuning.tune(hf, tok, items[:60], items[60:], vectors, cfg)
    changed = _changed(hf, before)
    assert any(".mlp." in k for k in changed) and all(k.startswith("model.layers.2.") for k in changed)
    hf.save_pretrained(str(tmp_path / "tuned"))
    tok.save_pretrained(str(tmp_path / "tuned"))
    reloaded = models.load(tmp_path / "tuned", backend=BACKEND)
    tokens = reloaded.to_tokens("i always speak lies . the sky is")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).float(), hf(tokens).logits.float(), atol=1e-4, rtol=0)


def test_study_runs_small_records_its_variants_and_saves_the_tuned_checkpoint(tmp_path):
    model = models.load("toy-s", backend=BACKEND)
    cfg = tuning.Config(n_train=32, n_val=16, n_eval=12, max_steps=4, max_new_tokens=4)
    r = tuning.run(model, cfg, name="toy-s", out=tmp_path, progress=False).to_dict()
    labels = [x["setting"] for x in r["settings"]]
    assert [x.split(" (")[0] for x in labels] == ["untuned", "online steering"] + [
        "token-only tuned",
        "dual-loss tuned",
        "dual-loss tuned",
        "token-only tuned",
        "dual-loss tuned",
    ]
    assert list(r["config"]["recipes"]) == ["seed", "ours"]
    assert list(r["config"]["routings"]) == ["seed-code", "intended"]
    ran = [(x["recipe"], x["routing"]) for x in r["settings"][2:]]
    assert ran == [("seed", None), ("seed", "seed-code"), ("seed", "intended"), ("ours", None), ("ours", "intended")]
    layers = list(r["config"]["layers"])
    for row in r["settings"][2:]:
        t = r["training"][row["setting"]]["tune_config"]
        want = tuning.recipe(
            row["recipe"], projection=row["routing"] is not None, routing=row["routing"], layers=tuple(layers)
        )
        assert t == {**want.__dict__, "layers": layers, "max_steps": 4}, row["setting"]
    card = json.loads((tmp_path / "tuned-model" / "tuning_card.json").read_text())
    assert card["setting"] == labels[3] and card["tune_config"]["routing"] == "seed-code"
    assert r["saved"].endswith("tuned-model")
    assert models.load(tmp_path / "tuned-model", backend=BACKEND).cfg.n_layers == model.cfg.n_layers
    for row in r["settings"]:
        assert 0 <= row["liar_id"]["accuracy"] <= 1 and row["liar_id"]["n"] == 12
    assert set(tuning.plot(r)) == {"tuning"}
    assert "seed-code routing" in tuning.table([r]) and "token weight 0.01" in tuning.table([r])
