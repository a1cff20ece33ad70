"""The shipped toy family: loads offline, its cards hold, a sample of each card re-measures, training reproduces."""

import dataclasses
import json
import math
import random

import pytest
import torch

from tests.conftest import BACKEND
from workbench import models
from workbench.generate import generate, generate_at_strengths
from workbench.interventions import AddDirection
from workbench.toy import NAMES, card, checkpoint_dir
from workbench.toy.evaluate import score
from workbench.toy.language import LEXICON, CorpusConfig, documents
from workbench.toy.measure import BARS, GRAMMAR_FLOOR, directions_for, steer_prompts
from workbench.toy.train import SIZES, validation_batch, validation_loss


@pytest.fixture(scope="module")
def toy_m():
    return models.load("toy-m", backend=BACKEND)


def _binomial_slack(p: float, n: int, sigmas: float = 4.0) -> float:
    return sigmas * math.sqrt(max(p * (1 - p), 0.01) / n)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_checkpoint_matches_its_card(name):
    c = card(name)
    model = models.load(name, backend=BACKEND)
    fp = models.fingerprint(model)
    assert fp.weights_sha256 == c["measured"]["fingerprint"]["weights_sha256"]
    assert (model.cfg.n_layers, model.cfg.d_model) == (c["training"]["n_layers"], c["training"]["d_model"])
    assert fp.architecture == "LlamaForCausalLM"
    size = sum(f.stat().st_size for f in checkpoint_dir(name).iterdir())
    assert size < 8_000_000
    # the card was trained by the recipe in SIZES: `workbench toy train --size NAME` retrains this checkpoint
    assert c["training"] == dataclasses.asdict(SIZES[name])
    assert c["corpus"] == json.loads(json.dumps(CorpusConfig().to_dict()))


def test_family_is_small_and_validation_loss_orders_by_size():
    """Each shipped size ends lower than the one below it, re-measured on 512 shared validation rows with a paired
    bootstrap interval over rows that excludes zero (as benchmarks/capacity_toy.py does). Every size trains for
    equal tokens (4000 steps), so the gaps are mostly capacity; toy-m - toy-l sits on the catalogue values
    (results/toy_family/SUMMARY.md), toy-s - toy-m is small (0.003)."""
    from transformers import AutoModelForCausalLM

    from workbench.metrics import bootstrap_ci
    from workbench.toy.train import token_losses

    total = sum(f.stat().st_size for n in NAMES for f in checkpoint_dir(n).iterdir())
    assert total < 20_000_000
    size = dataclasses.replace(SIZES["toy-m"], val_rows=512)  # the card's 128 rows and 384 more
    batch = validation_batch(size, (checkpoint_dir("toy-m") / "tokenizer.model").read_bytes())
    per_row = {}
    for n in NAMES:
        hf = AutoModelForCausalLM.from_pretrained(str(checkpoint_dir(n)), dtype=torch.float32)
        per_row[n] = token_losses(hf, batch).double().mean(1)
    for small, large in zip(NAMES, NAMES[1:]):
        gap = per_row[small] - per_row[large]
        assert bootstrap_ci(gap)[0] > 0, (small, large, float(gap.mean()))
        assert card(small)["validation_loss"] > card(large)["validation_loss"]


def test_tokenizer_is_one_piece_per_word_and_equals_sentencepiece(toy_m):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(checkpoint_dir("toy-m") / "tokenizer.model"))
    tok = models.tokenizer_of(toy_m)
    for w in LEXICON.words:
        assert len(sp.encode(w)) == 1, w
    stream = documents(123)
    for _ in range(50):
        text = next(stream)
        assert tok(text)["input_ids"] == [1] + sp.encode(text) == toy_m.to_tokens(text)[0].tolist()
        assert len(sp.encode(text)) == len(text.split())


def test_validation_loss_remeasures_exactly(toy_m):
    hf_dir = checkpoint_dir("toy-m")
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    size = SIZES["toy-m"]
    batch = validation_batch(size, (hf_dir / "tokenizer.model").read_bytes())
    assert validation_loss(hf, batch) == pytest.approx(card("toy-m")["validation_loss"], abs=2e-4)


#: Bars the shipped cards do not meet, with the reason in results/toy_family/SUMMARY.md ("What the cards show").
KNOWN_UNMET: dict[str, set[str]] = {"toy-m": set(), "toy-l": set()}


@pytest.mark.parametrize("name", ["toy-m", "toy-l"])
def test_cards_meet_every_bar_but_the_documented_ones(name):
    m = card(name)["measured"]
    missed = {k for k, ok in m["checks"].items() if not ok}
    assert missed == KNOWN_UNMET[name], missed  # a new miss fails, and so does a fixed one (update the summary)
    for attribute, grid in m["steering"].items():
        if f"steer_{attribute}" in KNOWN_UNMET[name]:
            continue
        best = grid["best"]
        assert best["target_rate"] >= BARS["steer_target"] and best["grammaticality"] >= GRAMMAR_FLOOR, attribute


@pytest.mark.parametrize("name", ["toy-m", "toy-l"])
def test_persona_probe_remeasures_on_fresh_pairs(name):
    """The card's best persona-probe layer reads the persona from 200 fresh pairs (held-out accuracy within
    binomial noise of the card), and the card records that layer's accuracy as its best."""
    t = card(name)["measured"]["truth"]
    layer = max(t["probe_accuracy"], key=lambda k: t["probe_accuracy"][k])
    assert t["probe_accuracy"][layer] == t["best_probe_accuracy"] >= BARS["truth_probe"]
    model = models.load(name, backend=BACKEND)
    ds = directions_for(model, "truth", "liar", "honest", n_pairs=200, seed=23)
    acc = ds.at(int(layer)).quality.probe_accuracy
    assert acc >= t["best_probe_accuracy"] - _binomial_slack(t["best_probe_accuracy"], 100), acc


def test_a_sample_of_the_card_remeasures(toy_m):
    """Fresh prompts and seeds: unsteered consistency and two best steering cells agree with the card."""
    m = card("toy-m")["measured"]
    # unsteered: attributes kept
    rng = random.Random(99)
    ps = steer_prompts("sentiment", "pos", 40, seed=rng.randrange(1000))
    g = generate(toy_m, [p.text for p in ps], max_new_tokens=32, seed=5)
    kept = score(list(g.texts), "sentiment", "pos", [p.text for p in ps])
    assert kept.target_rate >= m["unsteered"]["consistency"]["sentiment"] - _binomial_slack(0.97, 40)
    assert kept.grammaticality >= m["unsteered"]["grammaticality"] - 0.08
    # steering: the recorded best cell reproduces on fresh prompts (directions from fresh pairs)
    for attribute in ("sentiment", "topic"):
        grid = m["steering"][attribute]
        best = grid["best"]
        ds = directions_for(
            toy_m,
            attribute,
            grid["source"],
            grid["target"],
            n_pairs=100,
            seed=17,
            kind=best["kind"],
            position=best["position"],
        )
        d = ds.at(best["layer"], best["kind"])
        prompts = steer_prompts(attribute, grid["source"], 60, seed=31)
        texts = [p.text for p in prompts]
        steered, plain = generate_at_strengths(
            toy_m, texts, AddDirection(d.site, d.vector, 1.0), [best["strength"], 0.0], max_new_tokens=32, seed=11
        )
        s = score(list(steered.texts), attribute, grid["target"], texts)
        s0 = score(list(plain.texts), attribute, grid["target"], texts)
        slack = _binomial_slack(best["target_rate"], 60)
        assert abs(s.target_rate - best["target_rate"]) <= slack, (attribute, s.target_rate, best)
        assert s.grammaticality >= best["grammaticality"] - 0.1
        assert s0.target_rate < 0.3  # unsteered, the opposite prompts keep their value


@pytest.mark.skipif(BACKEND == "hooked", reason="training uses no TransformerLens; run once, on the bridge line")
def test_training_is_reproducible_on_a_short_schedule(tmp_path):
    """Two short runs of toy-s's recipe give identical weights and the shipped tokenizer. The full retrain
    (`workbench toy train --size toy-s --out toy-s`, about 7 min on 2 cores) reproduces the card's validation loss
    to 0.01; it is a documented command, not a test."""
    from safetensors.torch import load_file

    from workbench.toy.train import train

    a = train("toy-s", tmp_path / "a", steps=30, progress=False)
    b = train("toy-s", tmp_path / "b", steps=30, progress=False)
    wa, wb = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    vocab = models.load(checkpoint_dir("toy-s"), backend=BACKEND).cfg.d_vocab
    assert a["validation_loss"] == b["validation_loss"] < math.log(vocab)  # it learns, identically
    assert (tmp_path / "a" / "tokenizer.model").read_bytes() == (
        checkpoint_dir("toy-s") / "tokenizer.model"
    ).read_bytes()


def test_embed_std_reinitialises_only_the_input_embedding():
    from workbench.toy.train import build_model

    plain = dict(build_model(SIZES["toy-s"]).named_parameters())
    wide = dataclasses.replace(SIZES["toy-s"], embed_std=1.0)
    built, again = dict(build_model(wide).named_parameters()), dict(build_model(wide).named_parameters())
    emb = "model.embed_tokens.weight"
    assert built[emb].std().item() == pytest.approx(1.0, rel=0.02)
    assert not built[emb][3].any()  # the pad row stays zero, as the Llama initialiser leaves it
    assert plain[emb].std().item() == pytest.approx(0.02, rel=0.02)
    assert all(torch.equal(built[k], again[k]) for k in built)  # seeded: the same model every time
    assert all(torch.equal(built[k], plain[k]) for k in built if k != emb)
    with pytest.raises(ValueError, match="embed_std"):
        dataclasses.replace(SIZES["toy-s"], embed_std=0.0)
