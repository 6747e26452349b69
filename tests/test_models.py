import pytest
import torch

from knn_explorer.core.models import FINAL_HIDDEN, ModelLoadError, load_model
from tiny_models import TINY_CONFIGS, save_tiny_model


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_key_capture_has_model_width_and_leaves_logits_unchanged(tmp_path, model_type):
    loaded = load_model(str(save_tiny_model(tmp_path / model_type, model_type)), device="cpu")
    ids = torch.tensor([[5, 17, 33, 8, 41, 12, 9]])
    with torch.no_grad():
        plain = loaded.model(input_ids=ids).logits
        with loaded.capture_keys() as captured:
            hooked = loaded.model(input_ids=ids).logits
    assert len(captured) == 1
    assert captured[0].shape == (1, ids.shape[1], loaded.key_site.dim)
    assert loaded.key_site.dim == loaded.model.config.hidden_size
    assert torch.equal(plain, hooked)
    if model_type == "bloom":
        assert loaded.key_site.description == FINAL_HIDDEN
    else:
        assert "feed-forward" in loaded.key_site.description
        assert loaded.key_site.module_path.split(".")[-2] == str(loaded.model.config.num_hidden_layers - 1)


def test_key_is_the_normed_input_of_the_last_feed_forward_block(tiny_gpt2_dir):
    loaded = load_model(str(tiny_gpt2_dir), device="cpu")
    ids = torch.tensor([[3, 4, 5, 6]])
    last = loaded.model.transformer.h[-1]
    seen = {}
    handle = last.ln_2.register_forward_hook(lambda _m, _a, out: seen.setdefault("ln_2", out))
    with torch.no_grad(), loaded.capture_keys() as captured:
        loaded.model(input_ids=ids)
    handle.remove()
    assert torch.allclose(captured[0], seen["ln_2"])


def test_fingerprints_tell_weights_apart_but_not_dtypes(tiny_gpt2_dir, other_tiny_gpt2_dir):
    a = load_model(str(tiny_gpt2_dir), device="cpu")
    b = load_model(str(other_tiny_gpt2_dir), device="cpu")
    a16 = load_model(str(tiny_gpt2_dir), device="cpu", dtype="float16")
    assert a.tokenizer_fingerprint == b.tokenizer_fingerprint
    assert a.model_fingerprint != b.model_fingerprint
    assert a.model_fingerprint == a16.model_fingerprint


def test_bad_specs_give_one_line_reasons(tmp_path, tiny_gpt2_dir):
    (tmp_path / "empty").mkdir()
    cases = {
        str(tmp_path / "empty"): "no config.json",
        str(tmp_path / "missing" / "model"): "no such model folder",
    }
    for spec, expected in cases.items():
        with pytest.raises(ModelLoadError) as info:
            load_model(spec, device="cpu")
        assert expected in str(info.value) and "\n" not in str(info.value)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA device"):
            load_model(str(tiny_gpt2_dir), device="cuda")


def test_unknown_hub_id_fails_fast_with_a_reason():
    with pytest.raises(ModelLoadError) as info:
        load_model("knn-explorer-tests/no-such-model", device="cpu")
    message = str(info.value)
    assert "hub" in message and "no-such-model" in message and "\n" not in message
