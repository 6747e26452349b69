"""The CUDA paths: encoding on the GPU, IVF-PQ training with torch on the GPU. Skipped without one."""
from pathlib import Path

import numpy as np
import pytest
import torch
from corpus import write_corpus

from knn_explorer.core.datastore.catalog import Catalog
from knn_explorer.core.datastore.folder import Datastore
from knn_explorer.core.datastore.builder import BuildParameters
from knn_explorer.core.generation.step_generator import GenerationSettings, StepGenerator
from knn_explorer.core.mechanisms.knnlm import KnnLmSettings
from knn_explorer.core.datastore.library import build_datastore, open_datastore
from knn_explorer.core.methods import Resources
from knn_explorer.core.methods.knnlm import KnnLmMethod
from knn_explorer.core.models import load_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_cuda_build_matches_cpu_build_and_is_usable_on_cpu(tmp_path, tiny_gpt2_dir):
    docs = write_corpus(tmp_path / "docs")
    catalog = Catalog()
    cpu = load_model(str(tiny_gpt2_dir), device="cpu")
    gpu = load_model(str(tiny_gpt2_dir), device="cuda")
    assert gpu.model_fingerprint == cpu.model_fingerprint  # float16 on CUDA, float32 on CPU
    on_gpu = build_datastore(catalog, "gpu", gpu, [docs], BuildParameters(context_length=32, stride=16, device="cuda"))
    on_cpu = build_datastore(catalog, "cpu", cpu, [docs], BuildParameters(context_length=32, stride=16))
    a, b = Datastore(on_gpu.folder), Datastore(on_cpu.folder)
    assert np.array_equal(a.values, b.values)
    assert np.allclose(np.asarray(a.keys, np.float32), np.asarray(b.keys, np.float32), atol=2e-2)

    datastore = open_datastore(catalog, "gpu", cpu)  # built on the GPU, used on the CPU
    records = list(StepGenerator(gpu, "The quick", GenerationSettings(max_new_tokens=3, stop_at_eos=False),
                                 KnnLmMethod(gpu, KnnLmSettings(k=4), Resources(datastore))))
    assert len(records) == 3 and all(r.neighbours for r in records)


def test_a_datastore_opened_for_a_cuda_model_is_searched_exactly_on_the_gpu(tmp_path, tiny_gpt2_dir):
    from knn_explorer.core.datastore.exact_search import ExactSearch

    catalog = Catalog()
    gpu = load_model(str(tiny_gpt2_dir), device="cuda")
    build_datastore(catalog, "ivf", gpu, [write_corpus(tmp_path / "docs")],
                    BuildParameters(context_length=32, stride=16, index="ivfpq"))
    on_gpu, on_cpu = open_datastore(catalog, "ivf", gpu), Datastore(Path(catalog.datastore("ivf").folder))
    assert isinstance(on_gpu.searcher, ExactSearch) and on_gpu.searcher.keys.device.type == "cuda"
    queries = np.asarray(on_cpu.keys[::50][:16], dtype=np.float32) + 0.01
    exact = ExactSearch(on_cpu.keys).search(queries, 8)
    distances, ids = on_gpu.search(queries, 8)
    assert np.array_equal(ids, exact[1]) and np.allclose(distances, exact[0], rtol=1e-4, atol=1e-4)
