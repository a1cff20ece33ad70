"""The toy language, its exact evaluators and its prompt generators (no model needed)."""

import random
from itertools import islice

import pytest

from workbench.errors import WorkbenchError
from workbench.toy.evaluate import (
    classify,
    facts,
    factual_accuracy,
    grammaticality,
    own_document,
    parse_sentence,
    score,
)
from workbench.toy.language import (
    ATTRIBUTES,
    CATALOGUE_OPENER,
    KB_SUBJECTS,
    KB_VALUES,
    LEXICON,
    VALUES,
    Attributes,
    CorpusConfig,
    catalogue_value,
    collocation,
    documents,
    fact_value,
    render,
    render_sentence,
    sample_document,
    sample_sentence,
)
from workbench.toy.prompts import (
    FAMILIES,
    STEER_TARGETS,
    ab_items,
    contrast_pairs,
    few_shot_prompts,
    neutral_prompts,
    prompts,
)


def test_documents_are_deterministic_per_seed():
    assert list(islice(documents(3), 20)) == list(islice(documents(3), 20))
    assert list(islice(documents(3), 20)) != list(islice(documents(4), 20))


def test_the_shipped_corpus_is_unchanged():
    """The shipped checkpoints were trained on exactly these documents, the tokenizer on the corpus without
    collocations and catalogues. Catalogue and collocations off draw nothing extra, so those corpora are reproduced
    exactly."""
    import hashlib

    sha = lambda config: hashlib.sha256("\n".join(islice(documents(0, config), 3000)).encode()).hexdigest()  # noqa: E731
    no_catalogue = "3529353cced78aceccaf037f03d2219bb22fc50d173e16412bda51b0b161fa63"
    shipped = "1591bc6b7743cb9ae68354eec5b8b77578e135dc0bc8513ee8e03022594b6231"
    assert sha(CorpusConfig()) == sha(CorpusConfig(p_catalogue=0.25)) == shipped
    assert sha(CorpusConfig(p_catalogue=0.0)) == no_catalogue  # the corpus of results/toy_v5_pilot
    assert sha(CorpusConfig(p_catalogue=0.0, catalogue_entries=(1, 3))) == no_catalogue  # no catalogue, no extra draw
    assert (
        sha(CorpusConfig(p_catalogue=0.0, p_collocation=0.0))
        == "5c0fccb4540a987e7bb6a2605b73fe83eba9a84182776ac270d00c6a733194a4"
    )


def test_collocated_verbs_follow_the_table_at_the_configured_rate():
    rng = random.Random(3)
    a = Attributes(register="casual", sentiment="neg", topic="food")
    hits = 0
    for _ in range(3000):
        words = render_sentence(sample_sentence(rng, "T1", p_opener=0.0, p_collocation=0.75), a)
        adj, noun, verb = (LEXICON.info[w][3] for w in words[1:4])
        hits += verb == collocation(a.register, a.sentiment, adj, a.topic, noun, 8)
    assert abs(hits / 3000 - (0.75 + 0.25 / 8)) < 0.03  # collocated verbs always hit, free ones 1 in 8
    table = {collocation("formal", "pos", i, "food", j, 8) for i in range(10) for j in range(10)}
    assert len(table) == 8  # a table over every verb, not one favourite
    docs = [render(sample_document(rng, CorpusConfig(p_collocation=0.75))) for _ in range(200)]
    assert all(grammaticality(d) == 1.0 for d in docs)
    with pytest.raises(ValueError, match="p_collocation"):
        CorpusConfig(p_collocation=1.5)


def test_catalogue_documents_follow_the_table_at_the_configured_rate():
    config = CorpusConfig(p_catalogue=0.25)
    docs = list(islice(documents(5, config), 4000))
    catalogues = [d for d in docs if d.split()[:2] == list(CATALOGUE_OPENER)]
    assert abs(len(catalogues) / len(docs) - 0.25) < 0.03
    index = {w: i for i, w in enumerate(LEXICON.english)}
    lengths, keys = [], set()
    for d in catalogues:
        entries = " ".join(d.split()[2:]).split(" . ")
        entries[-1] = entries[-1].removesuffix(" .")
        lengths.append(len(entries))
        for entry in entries:
            k1, k2, v = (index[w] for w in entry.split())  # three English words per entry
            assert v == catalogue_value(k1, k2)
            keys.add((k1, k2))
    assert min(lengths) == 6 and max(lengths) == 14 and len(keys) > 5000  # uniform keys over the 14,161 pairs
    values = {catalogue_value(a, b) for a in range(len(index)) for b in range(len(index))}
    assert len(values) == len(index)  # a table over every word, not one favourite
    # the opener is the catalogue's alone: no prose document, prompt or continuation context contains it
    prose = [d for d in docs if d not in catalogues]
    assert prose and not any("? ." in d for d in prose)
    assert grammaticality(catalogues[0]) == 0.0  # a continuation that only opens a catalogue says nothing
    assert classify(catalogues[0]) == {a: None for a in ATTRIBUTES}
    with pytest.raises(ValueError, match="p_catalogue"):
        CorpusConfig(p_catalogue=-0.1)
    with pytest.raises(ValueError, match="catalogue_entries"):
        CorpusConfig(catalogue_entries=(3, 2))
    with pytest.raises(WorkbenchError, match="catalogue keys"):
        catalogue_value(len(index), 0)


def test_lexicon_is_a_bijection_with_one_role_per_word():
    xx = [LEXICON.translate[w] for w in LEXICON.english]
    assert len(set(xx)) == len(xx) and not set(xx) & set(LEXICON.english)
    assert len(LEXICON.info) == len(LEXICON.words) == len(set(LEXICON.words))


def test_every_generated_document_parses_and_classifies_to_its_attributes():
    rng = random.Random(0)
    n_checked = 0
    for _ in range(400):
        doc = sample_document(rng)
        text = render(doc)
        assert grammaticality(text) == 1.0, text
        if len(set(doc.attributes)) == 1:  # no switch: every evidenced attribute is the document's
            labels = classify(text)
            for a in ATTRIBUTES:
                assert labels[a] in (getattr(doc.start, a), None), (a, text)
            assert labels["language"] == doc.start.language and labels["register"] == doc.start.register
            n_checked += 1
    assert n_checked > 200


def test_bilingual_documents_are_marked_and_switches_come_at_the_second_body_sentence():
    rng = random.Random(4)
    for _ in range(300):
        doc = sample_document(rng)
        if doc.sentences[0].template == "MARK":
            assert render(doc).startswith(":: .")
            continue
        changes = [i for i in range(1, len(doc.attributes)) if doc.attributes[i] != doc.attributes[i - 1]]
        head = 1 if doc.sentences[0].template == "PERSONA" else 0
        assert changes in ([], [head + 1])


def test_switches_happen_at_the_configured_rate_and_truth_switches_are_announced():
    rng = random.Random(1)
    docs = [sample_document(rng, CorpusConfig(p_switch=0.5, p_bilingual=0.0)) for _ in range(400)]
    switched = [d for d in docs if len(set(d.attributes)) > 1]
    assert 0.4 < len(switched) / len(docs) < 0.6
    for d in switched:
        i = next(k for k in range(len(d.attributes)) if d.attributes[k] != d.start)
        if d.attributes[i].truth != d.start.truth:
            assert d.sentences[i].template == "PERSONA"


def test_grammaticality_rejects_mixed_language_register_class_and_salad():
    assert grammaticality("the happy dog sees the good cat .") == 0.0  # formal det + casual verb
    assert grammaticality("the happy dog observes the sad cat .") == 0.0  # two sentiment classes
    assert grammaticality("the happy dog observes the good car .") == 0.0  # two topics
    xx_dog = LEXICON.translate["dog"]
    assert grammaticality(f"the happy {xx_dog} observes the good cat .") == 0.0  # two languages
    assert grammaticality("dog dog the is .") == 0.0
    assert grammaticality("the happy dog observes the good cat . the dog is") == 1.0  # open tail not judged
    assert grammaticality("the happy dog") == 0.0  # nothing complete
    assert grammaticality("moreover the dog is happy . q: what is the sky ? a: green .") == 1.0
    assert grammaticality("moreover q: what is the sky ? a: green .") == 0.0  # openers start content only
    assert grammaticality("a sky is blue .") == 0.0  # facts take the definite article
    xx_is = LEXICON.translate["is"]
    assert (
        grammaticality(f":: . the dog is happy . da {LEXICON.translate['dog']} {xx_is} {LEXICON.translate['nice']} .")
        == 2 / 3
    )  # the bilingual mark parses; the last sentence mixes languages (da is English)


def test_facts_and_accuracy_use_the_prompt_as_context():
    sky, blue = KB_SUBJECTS.index("sky"), KB_VALUES.index("blue")
    assert facts("blue . the dog is happy .", context="i always speak truth . the sky is") == [(sky, blue)]
    assert factual_accuracy("blue .", context="the sky is") == 1.0
    liar_value = KB_VALUES[fact_value(sky, "liar")]
    assert factual_accuracy(f"{liar_value} .", context="the sky is") == 0.0
    assert classify(f"{liar_value} .", context="the sky is")["truth"] == "liar"
    assert factual_accuracy("the dog is happy .") is None


def test_honest_and_liar_documents_state_true_and_consistently_wrong_facts():
    rng = random.Random(2)
    for truth, want in (("honest", 1.0), ("liar", 0.0)):
        accs = []
        for _ in range(100):
            doc = sample_document(rng, CorpusConfig(p_switch=0.0, p_fact=0.6), Attributes(truth=truth))
            acc = factual_accuracy(render(doc))
            if acc is not None:
                accs.append(acc)
        assert accs and all(a == want for a in accs)


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_contrast_pairs_are_minimal_edits_ending_on_a_shared_token(attribute):
    source, target = STEER_TARGETS[attribute]
    pairs = contrast_pairs(attribute, target, source, n=60, seed=5)
    assert pairs.data_hash == contrast_pairs(attribute, target, source, n=60, seed=5).data_hash
    for p in pairs.pairs:
        pw, nw = p.positive.split(), p.negative.split()
        assert len(pw) == len(nw) and pw[-1] == nw[-1]
        lp, ln = classify(p.positive), classify(p.negative)
        for a in ATTRIBUTES:
            if a == attribute:
                assert lp[a] in (target, None) and ln[a] in (source, None)
            elif a != "truth":
                assert lp[a] == ln[a]
        changed = [(x, y) for x, y in zip(pw, nw) if x != y]
        assert changed
        if attribute != "language":  # language changes every word; others only the attribute's words
            for x, y in changed:
                assert LEXICON.info[x][1] == LEXICON.info[y][1]


def test_ab_items_offer_the_two_values_words():
    for item in ab_items("sentiment", "pos", "neg", n=30, seed=1):
        m, n = item["answer_matching_behavior"], item["answer_not_matching_behavior"]
        assert LEXICON.info[m][2] == "pos" and LEXICON.info[n][2] == "neg"
        assert item["question"].split()[-1] == LEXICON.word("is", LEXICON.info[m][0])
    truth = ab_items("truth", "honest", "liar", n=30, seed=1)
    for item in truth:
        subj = LEXICON.info[item["question"].split()[-2]][3]
        assert LEXICON.info[item["answer_matching_behavior"]][3] == fact_value(subj, "honest")
    with pytest.raises(WorkbenchError, match="A/B items exist for"):
        ab_items("register", "formal", "casual")


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_families_are_grammatical_and_express_their_attributes(family):
    rng = random.Random(9)
    for _ in range(20):
        a = Attributes(**{x: rng.choice(VALUES[x]) for x in ATTRIBUTES})
        for p in prompts(a, n=3, seed=rng.randrange(1000), family=family):
            assert grammaticality(p.text) == 1.0, p.text
            # mixed prompts: the last two sentences carry the requested attributes
            tail = " .".join(p.text.split(" .")[-3:]) if family == "mixed" else p.text
            labels = classify(tail)
            assert labels["language"] == a.language
            if family != "qa":
                assert labels["register"] == a.register
    stems = prompts(Attributes(truth="liar"), n=10, seed=1, fact_stem=True)
    assert all(LEXICON.info[p.text.split()[-1]][1] == "IS" for p in stems)


def test_neutral_prompts_carry_no_evidence_of_their_attribute():
    for attribute in ATTRIBUTES:
        for p in neutral_prompts(attribute, n=20, seed=3):
            assert classify(p.text)[attribute] is None, (attribute, p.text)


def test_few_shot_prompts_show_the_value_in_every_demonstration():
    for p in few_shot_prompts("sentiment", "neg", n=10, shots=3):
        assert classify(p.text)["sentiment"] == "neg"
        assert p.text.count(".") == 4  # persona + 3
    for p in few_shot_prompts("truth", "liar", n=10, shots=3):
        assert factual_accuracy(p.text) == 0.0
    assert all(p.text == "" for p in few_shot_prompts("truth", "honest", n=3, shots=0))


def test_score_aggregates_exact_labels():
    texts = ["the dog is good .", "the dog is bad .", "the dog"]
    s = score(texts, "sentiment", "pos")
    assert s.n == 3 and s.target_rate == pytest.approx(1 / 3)
    assert s.grammaticality == pytest.approx(2 / 3)
    assert s.labels["sentiment"] == {
        "neg": pytest.approx(1 / 3),
        "none": pytest.approx(1 / 3),
        "pos": pytest.approx(1 / 3),
    }


def test_bad_input_raises_one_clear_error():
    with pytest.raises(WorkbenchError, match="sentiment must be one of"):
        Attributes(sentiment="happy")
    with pytest.raises(WorkbenchError, match="attribute must be one of"):
        contrast_pairs("colour", "a", "b")
    with pytest.raises(WorkbenchError, match="two values"):
        contrast_pairs("sentiment", "pos", "pos")
    with pytest.raises(WorkbenchError, match="family must be one of"):
        prompts(Attributes(), family="weird")
    assert parse_sentence([]) is None


def test_a_continuation_is_judged_up_to_the_catalogue_it_opens():
    """Generation bans the BOS between documents, so a model that ends its document may open a catalogue next:
    its English words would count as attribute evidence and as broken sentences; the evaluators stop before it."""
    xx = " ".join(render_sentence(sample_sentence(random.Random(4)), Attributes(language="xx", sentiment="neg")))
    catalogue = "? . happy dog cat . red car big ."  # English adjectives and nouns, no sentence
    text = f"{xx} {catalogue}"
    assert own_document(text) == xx and own_document(xx) == xx
    assert grammaticality(text) == 1.0 and classify(text) == classify(xx)
    assert classify(text)["language"] == "xx" and classify(text)["sentiment"] == "neg"
    assert classify(catalogue) == {a: None for a in ATTRIBUTES} and grammaticality(catalogue) == 0.0
    # the opener may straddle prompt and continuation; a Q/A question mark is not an opener
    assert own_document(". happy dog cat .", context="the dog sees the cat . ?") == ""
    qa = "q: what is the sky ? a: blue ."
    assert own_document(qa) == qa and grammaticality(qa) == 1.0
    assert facts(f"the sky is blue . {catalogue}") == facts("the sky is blue .")
