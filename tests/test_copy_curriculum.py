"""Stage 1 of the demo's memory adapter: teaching the retrofit's layer copies to copy from their
own context (`training/copy_curriculum.py`), without writing the model."""
import pytest
import torch
from test_memorizing_finetuning import _assert_bit_identical, _snapshot
from tiny_models import save_tiny_model

from knn_explorer.core.mechanisms.memorizing import MemorizingRetrofit, MemorizingSettings
from knn_explorer.core.models import load_model
from knn_explorer.core.training.copy_curriculum import CopyCurriculum, RepeatSampler, teach_copying


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("llama"), "llama")), device="cpu")


def test_windows_hold_a_repeat_in_the_shares_asked_for():
    stream = torch.arange(10_000) % 9_973  # no span of it repeats by itself
    settings = CopyCurriculum(window=64, repeated_share=0.75, random_share=0.5, seed=1)
    sampler = RepeatSampler(stream, vocab_size=500, settings=settings)
    kinds = {"random": 0, "span": 0, "plain": 0}
    for _ in range(400):
        x = sampler.window()
        assert x.shape == (65,)
        periods = [n for n in range(8, 129) if n < 65 and torch.equal(x[n:], x[:-n])]
        if periods:  # random tokens repeated to the end: periodic
            assert int(x.max()) < 500
            kinds["random"] += 1
        elif len(set(x.tolist())) < len(x):  # some tokens occur twice: a copied span
            kinds["span"] += 1
        else:
            kinds["plain"] += 1
    assert kinds["random"] / 400 == pytest.approx(0.375, abs=0.08)
    assert kinds["span"] / 400 == pytest.approx(0.375, abs=0.08)
    assert kinds["plain"] / 400 == pytest.approx(0.25, abs=0.08)


def test_a_too_short_text_is_a_clear_error():
    with pytest.raises(ValueError, match="needs at least"):
        RepeatSampler(torch.arange(100), vocab_size=50, settings=CopyCurriculum(window=64))


def test_the_curriculum_trains_the_copies_and_leaves_the_model_bit_identical(llama):
    # (The demo model learns to copy in ~600 updates, tools/train_demo_memorizing.py; a tiny random
    # model is too far from it for a test's budget, so this checks the training, not the circuit.)
    snapshot = _snapshot(llama)
    retrofit = MemorizingRetrofit(llama, MemorizingSettings(layer=1, k=4))
    stream = torch.randint(3, 100, (4_000,), generator=torch.Generator().manual_seed(0))
    probe = torch.randint(3, 100, (1, 16), generator=torch.Generator().manual_seed(7)).repeat(1, 3)

    def repeat_loss(tuned: bool) -> float:
        with torch.no_grad():
            if tuned:
                with retrofit.filling():
                    logits = llama.model(input_ids=probe[:, :-1]).logits[0]
            else:
                with retrofit.set_aside():  # the model's own layers
                    logits = llama.model(input_ids=probe[:, :-1]).logits[0]
        retrofit.reset()
        return float(torch.nn.functional.cross_entropy(logits[16:], probe[0, 17:]))

    try:
        before = repeat_loss(tuned=False)
        result = teach_copying(llama, retrofit, stream, CopyCurriculum(steps=150, batch=8, window=48,
                                                                        learning_rate=1e-2, repeated_share=0.5,
                                                                        random_share=0.0, tune_from=0))
        losses = [s.loss for s in result.steps]
        assert len(losses) == 150 and sum(losses[-20:]) / 20 < sum(losses[:20]) / 20 - 0.05
        assert abs(repeat_loss(tuned=True) - before) > 1e-3  # the memory's passes use the trained copies
        assert repeat_loss(tuned=False) == pytest.approx(before, abs=1e-6)  # the model itself did not change
        assert retrofit.tuned_modules()[0] == "model.layers.0"
    finally:
        retrofit.remove()
    _assert_bit_identical(llama, snapshot)
