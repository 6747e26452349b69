"""The step generator: cached steps equal full forward passes, long runs, branching, sampling."""
import pytest
import torch
from tiny_models import save_tiny_model

from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.methods import get
from knn_explorer.core.models import load_model

PROMPT = "The quick brown fox"


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "gpt_neox", "opt"])
def test_cached_greedy_steps_equal_full_forward_argmax(tmp_path, model_type):
    model = load_model(str(save_tiny_model(tmp_path / model_type, model_type)), device="cpu")
    generator = StepGenerator(model, PROMPT, GenerationSettings(max_new_tokens=8, stop_at_eos=False))
    records = list(generator)
    ids = list(generator.prompt_ids)
    for record in records:
        with torch.no_grad():
            logits = model.model(input_ids=torch.tensor([ids])).logits[0, -1]
        probs = torch.softmax(logits.float(), -1)
        assert record.token_id == int(probs.argmax())
        assert record.chosen_prob_lm == pytest.approx(float(probs.max()), rel=1e-4)
        assert record.p_knn is None and record.neighbours == [] and record.lambda_ is None
        ids.append(record.token_id)


def test_generation_runs_past_the_models_maximum_length(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    assert model.max_positions == 64
    generator = StepGenerator(model, PROMPT, GenerationSettings(max_new_tokens=100, stop_at_eos=False))
    records = list(generator)
    assert len(records) == 100 and len(generator.ids) > model.max_positions
    # The last step saw the tokens its cache held since the latest restart: a direct forward pass
    # over exactly those gives the same distribution.
    context = generator.ids[generator._cache_end - generator._cache_tokens : generator._cache_end]
    assert model.max_positions // 2 <= len(context) <= model.max_positions
    with torch.no_grad():
        probs = torch.softmax(model.model(input_ids=torch.tensor([context])).logits[0, -1], -1)
    assert records[-1].token_id == int(probs.argmax())
    assert records[-1].chosen_prob_lm == pytest.approx(float(probs.max()), rel=1e-4)


def test_forced_token_branches_and_seeded_sampling_repeats(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    generator = StepGenerator(model, PROMPT, GenerationSettings(max_new_tokens=5))
    first = generator.step()
    alternative = first.p_lm[1].token_id
    branch = StepGenerator(model, generator.prompt_ids, GenerationSettings(max_new_tokens=5))
    forced = branch.step(forced_token=alternative)
    assert forced.token_id == alternative and branch.generated_ids == [alternative]

    def sample(seed):
        settings = GenerationSettings(max_new_tokens=12, greedy=False, seed=seed, stop_at_eos=False)
        return [r.token_id for r in StepGenerator(model, PROMPT, settings)]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_knnlm_without_a_datastore_is_refused(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    with pytest.raises(ValueError, match="datastore"):
        StepGenerator(model, PROMPT, GenerationSettings(), get("knnlm")(model))


def test_the_generation_loop_forces_a_first_token_and_honours_stop_at_eos(tiny_gpt2_dir):
    model = load_model(str(tiny_gpt2_dir), device="cpu")
    eos = model.tokenizer.eos_token_id
    stopping = StepGenerator(model, PROMPT, GenerationSettings(max_new_tokens=4, stop_at_eos=True))
    assert [r.token_id for r in stopping.records(first_token=eos)] == [eos]
    going_on = StepGenerator(model, PROMPT, GenerationSettings(max_new_tokens=4, stop_at_eos=False))
    records = list(going_on.records(first_token=eos))
    assert len(records) == 4 and records[0].token_id == eos
