"""Representation tuning (analyses/tuning.py): cosine goes up, routing and freezing hold, the checkpoint reloads."""

import pytest
import torch

from analyses import tuning
from analyses.common import fact_items
from tests.conftest import BACKEND
from workbench import models
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


def test_projection_tuning_raises_cosine_and_touches_only_v_and_o(setup):
    fresh, vectors, items = setup
    hf, tok = fresh()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    cfg = tuning.TuneConfig(layers=(1, 2), token_weight=0.0, max_steps=12, eval_every=4, patience=50, batch_size=8)
    cos0 = _cos(hf, tok, items[60:], vectors, cfg)
    tuning.tune(hf, tok, items[:60], items[60:], vectors, cfg)
    assert _cos(hf, tok, items[60:], vectors, cfg) > cos0 + 0.05
    changed = {k for k, v in hf.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(".self_attn.v_proj." in k or ".self_attn.o_proj." in k for k in changed)
    assert all(k.startswith(("model.layers.1.", "model.layers.2.")) for k in changed)


def test_token_loss_trains_whole_layers_and_freezes_the_rest(setup, tmp_path):
    fresh, vectors, items = setup
    hf, tok = fresh()
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    cfg = tuning.TuneConfig(layers=(2,), projection=False, max_steps=8, eval_every=4, patience=50, batch_size=8)
    tuning.tune(hf, tok, items[:60], items[60:], vectors, cfg)
    changed = {k for k, v in hf.state_dict().items() if not torch.equal(v, before[k])}
    assert any(".mlp." in k for k in changed) and all(k.startswith("model.layers.2.") for k in changed)
    hf.save_pretrained(str(tmp_path / "tuned"))
    tok.save_pretrained(str(tmp_path / "tuned"))
    reloaded = models.load(tmp_path / "tuned", backend=BACKEND)
    tokens = reloaded.to_tokens("i always speak lies . the sky is")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(tokens).float(), hf(tokens).logits.float(), atol=1e-4, rtol=0)


def test_study_runs_small_and_saves_the_tuned_checkpoint(tmp_path):
    model = models.load("toy-s", backend=BACKEND)
    r = tuning.run(
        model, tuning.Config(n_train=32, n_val=16, n_eval=12, max_steps=4, max_new_tokens=4), name="toy-s", out=tmp_path
    ).to_dict()
    assert [x["setting"].split(" (")[0] for x in r["settings"]] == [
        "untuned",
        "online steering",
        "token-only tuned",
        "dual-loss tuned",
    ]
    assert (tmp_path / "tuned-model" / "tuning_card.json").is_file() and r["saved"].endswith("tuned-model")
    assert models.load(tmp_path / "tuned-model", backend=BACKEND).cfg.n_layers == model.cfg.n_layers
    for row in r["settings"]:
        assert 0 <= row["liar_id"]["accuracy"] <= 1 and row["liar_id"]["n"] == 12
    assert set(tuning.plot(r)) == {"tuning"}
