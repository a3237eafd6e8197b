"""`collapse-probe spectrum` on Hugging Face save_pretrained folders: BERT on .txt/.jsonl text,
DINOv2 / ViT-MAE on images through their saved image processor (or, with --image-size/--resize,
the evaluation transform and the processor's rescale and normalisation), auto_map refused, a
missing transformers named in one line; `compare` on folders, alone and mixed with a checkpoint.
Tiny random configs saved into tmp folders: no download."""

from __future__ import annotations

import json
import sys
import uuid

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from collapse_probe import spectrum

transformers = pytest.importorskip("transformers")

WORDS = "the a cat dog model river city music data light small green quickly under over runs".split()
QUIET = ["--workers", "0", "--batch-size", "3", "--quiet", "--json"]


def _sentences(n: int = 11) -> list[str]:
    rng = np.random.default_rng(0)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(1, 12)))) for _ in range(n)]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("bert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    folder = root / "model"
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(vocab_file=str(vocab)).save_pretrained(folder)
    return folder


def _dino_folder(root, processor: bool = True, **processor_kwargs):
    """A tiny DINOv2 (any input size: it interpolates its position embeddings) with a BitImageProcessor
    (resize 28, crop 24) unless ``processor`` is False."""
    torch.manual_seed(0)
    config = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, image_size=24, patch_size=8)
    transformers.Dinov2Model(config).save_pretrained(root)
    if processor:
        transformers.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 24, "width": 24},
                                       **processor_kwargs).save_pretrained(root)
    return root


def _vit_folder(root, processor: bool = True):
    """A tiny ViT that takes 16 px inputs only, with a ViTImageProcessor (resize to 16) unless ``processor`` is False."""
    torch.manual_seed(1)
    config = transformers.ViTConfig(hidden_size=12, num_hidden_layers=1, num_attention_heads=2, intermediate_size=24,
                                    image_size=16, patch_size=8)
    transformers.ViTModel(config).save_pretrained(root)
    if processor:
        transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root)
    return root


def _readable_images(folder) -> list:
    """The fixture folder's images decoded by PIL itself (the corrupt one and the text file left out)."""
    images = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in {".jpg", ".png"}:
            try:
                with Image.open(path) as image:
                    images.append(image.convert("RGB"))
            except OSError:
                continue
    return images


def _numpy_eigenvalues(folder, x: torch.Tensor) -> np.ndarray:
    """Independent reference: the model loaded by transformers itself, last_hidden_state averaged over
    tokens, then numpy float64 eigenvalues (descending) of the centred ddof-1 covariance."""
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    with torch.no_grad():
        z = model(pixel_values=x).last_hidden_state.mean(dim=1).double().numpy()
    return np.linalg.eigvalsh(np.cov(z, rowvar=False, ddof=1))[::-1]


def _reference(folder, batches):
    """The library's spectrum() on the model loaded by transformers itself, on the same batches."""
    model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
    return spectrum(model, batches, progress=False)


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_bert_folder_on_text_equals_library_spectrum_on_tokenized_batches(invoke, bert_folder, tmp_path, suffix):
    texts = _sentences()
    data = tmp_path / f"texts{suffix}"
    lines = texts if suffix == ".txt" else [json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)]
    data.write_text("\n".join(lines[:5]) + "\n\n" + "\n".join(lines[5:]) + "\n")  # one blank line, skipped
    code, out, err = invoke(["spectrum", bert_folder, "--data", data, "--out", tmp_path / "o", *QUIET])
    assert code == 0, err
    report = json.loads(out)
    source = report["source"]
    assert source["n_texts"] == len(texts) and source["n_blank_lines_skipped"] == 1
    assert source["load"]["kind"] == "Hugging Face folder" and source["arch"] == "BertModel"
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(bert_folder), local_files_only=True)
    batches = [dict(tokenizer(texts[i:i + 3], padding=True, truncation=True, max_length=32, return_tensors="pt"))
               for i in range(0, len(texts), 3)]
    assert any((b["attention_mask"] == 0).any() for b in batches)  # padding present: the mask matters
    expected = _reference(bert_folder, batches).eigenvalues.numpy()
    got = np.array(report["layers"]["output"]["eigenvalues"])
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-10 * expected.max())


def test_dinov2_folder_uses_its_image_processor(invoke, image_folder, tmp_path):
    folder = _dino_folder(tmp_path / "dino")
    code, out, err = invoke(["spectrum", folder, "--data", image_folder, "--out", tmp_path / "o", *QUIET])
    assert code == 0, err
    source = json.loads(out)["source"]
    assert source["image_size"] == 24 and "BitImageProcessor" in source["preprocessing"]
    assert source["n_images"] == 10 and source["n_unreadable_skipped"] == 1
    assert any("preprocessor_config.json" in note for note in source["load"]["notes"])
    # the same as the processor's own pixel_values through the library
    from collapse_probe.data.images import list_images, load_image

    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    pixels = []
    for path in list_images(image_folder):
        try:
            pixels.append(processor(images=load_image(path), return_tensors="pt")["pixel_values"])
        except Exception:  # noqa: BLE001 - the corrupt file
            continue
    assert pixels[0].shape[-1] == 24
    x = torch.cat(pixels)
    expected = _reference(folder, [x[i:i + 3] for i in range(0, len(x), 3)]).eigenvalues.numpy()
    got = np.array(json.loads(out)["layers"]["output"]["eigenvalues"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9 * expected.max())


@pytest.mark.parametrize(("processor_kwargs", "size_args", "crop", "resize"), [
    ({}, ["--image-size", "32"], 32, 36),  # CLIP mean/std, 1/255
    ({"do_normalize": False, "rescale_factor": 1 / 127.5}, ["--resize", "30"], 24, 30),  # crop: the processor's
], ids=["image-size", "resize-unnormalised"])
def test_image_size_on_a_folder_with_a_processor_is_honoured_with_its_pixel_scaling(
        invoke, image_folder, tmp_path, processor_kwargs, size_args, crop, resize):
    """--image-size/--resize replace the processor's resize and crop by the evaluation transform
    (bilinear resize of the shorter side, centre crop) and keep its rescale and normalisation: the
    same spectrum as torchvision transforms then the processor's formula (x r - mean) / std here."""
    folder = _dino_folder(tmp_path / "dino", **processor_kwargs)
    code, out, err = invoke(["spectrum", folder, "--data", image_folder, *size_args, "--out", tmp_path / "o", *QUIET])
    assert code == 0, err
    report = json.loads(out)
    source = report["source"]
    assert (source["image_size"], source["resize"]) == (crop, resize)
    assert "own resize and crop not used" in source["preprocessing"]
    processor_notes = [n for n in source["load"]["notes"] if n.startswith("images preprocessed by")]
    assert processor_notes == ["images preprocessed by " + source["preprocessing"]]  # not the processor's crop 24

    processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    images = _readable_images(image_folder)
    prepare = T.Compose([T.Resize(resize, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                         T.CenterCrop(crop), T.PILToTensor()])
    x = torch.stack([prepare(image) for image in images]).double() * processor.rescale_factor
    if processor.do_normalize:
        x = (x - torch.tensor(processor.image_mean).view(3, 1, 1)) / torch.tensor(processor.image_std).view(3, 1, 1)
    expected = _numpy_eigenvalues(folder, x.float())
    got = np.array(report["layers"]["output"]["eigenvalues"])
    assert report["layers"]["output"]["n_samples"] == len(images) == 9
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * expected[0])
    # the option is not a no-op: the processor's own 24 px pipeline gives another spectrum
    own = _numpy_eigenvalues(folder, processor(images=images, return_tensors="pt")["pixel_values"])
    assert np.abs(own - expected).max() > 1e-2 * expected[0]


def test_image_size_a_fixed_size_folder_cannot_take_is_refused_in_one_line(invoke, image_folder, tmp_path):
    code, out, err = invoke(["spectrum", _vit_folder(tmp_path / "vit"), "--data", image_folder, "--image-size", "24",
                             "--out", tmp_path / "o", *QUIET])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "24" in err and "16" in err


def test_compare_folders_and_a_checkpoint_equals_spectrum_of_each(invoke, image_folder, checkpoints, tmp_path):
    """Folders with an image processor get a pass each, the checkpoint its own: every row of the
    table, the --json metrics and compare.json's eigenvalues equal `spectrum` on that source alone."""
    sources = [_dino_folder(tmp_path / "dino"), _vit_folder(tmp_path / "vit"), checkpoints["pt"]]
    common = ["--data", image_folder, "--arch", "resnet18", "--workers", "0", "--batch-size", "4"]
    code, out, err = invoke(["compare", *sources, *common, "--quiet", "--json", "--out", tmp_path / "cmp"])
    assert code == 0, err
    metrics = json.loads(out)
    document = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert list(metrics) == list(document["layers"]) == ["dino:output", "vit:output", "plain.pt:fc"]
    assert document["roles"] == {"dino:output": "output", "vit:output": "output", "plain.pt:fc": "representation"}
    assert (tmp_path / "cmp" / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, table, err = invoke(["compare", *sources, *common, "--out", tmp_path / "cmp2"])
    assert code == 0, err
    rows = {line.split()[0]: line.split() for line in table.strip().splitlines()[1:]}
    for source, key in zip(sources, metrics, strict=True):
        layer = key.rpartition(":")[2]
        code, out, err = invoke(["spectrum", source, *common, "--quiet", "--json",
                                 "--out", tmp_path / f"alone_{source.name}"])
        assert code == 0, err
        alone = json.loads(out)
        expected = np.array(alone["layers"][layer]["eigenvalues"])
        np.testing.assert_allclose(document["layers"][key]["eigenvalues"], expected, rtol=0, atol=1e-9 * expected[0])
        assert metrics[key]["effective_rank"] == pytest.approx(alone["metrics"][layer]["effective_rank"], rel=1e-9)
        assert metrics[key]["rankme"] == pytest.approx(alone["metrics"][layer]["rankme"], rel=1e-9)
        assert rows[key][4] == f"{alone['metrics'][layer]['effective_rank']:.2f}"
    assert alone["source"]["image_size"] == 224  # the checkpoint alone: the default, not a folder's processor size


def test_compare_folders_without_processors_in_one_pass_equals_spectrum_of_each(invoke, image_folder, tmp_path,
                                                                                 monkeypatch):
    """Folders without an image processor share one pass (ModelBundle hooks each model's output);
    --image-size applies to both, and each spectrum equals that folder's `spectrum` alone."""
    import collapse_probe.pipeline.checkpoints as pipeline

    sources = [_dino_folder(tmp_path / "dino", processor=False), _vit_folder(tmp_path / "vit", processor=False)]
    common = ["--data", image_folder, "--image-size", "16", "--resize", "20", *QUIET]
    calls = []
    real = pipeline.spectrum
    monkeypatch.setattr(pipeline, "spectrum", lambda *a, **k: calls.append(a[2].module_names()) or real(*a, **k))
    code, out, err = invoke(["compare", *sources, *common, "--out", tmp_path / "cmp"])
    assert code == 0, err
    assert calls == [["outputs.m0", "outputs.m1"]]  # one pass over the images for both folders
    assert (tmp_path / "cmp" / "compare.png").is_file()
    document = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    for source in sources:
        code, out, err = invoke(["spectrum", source, *common, "--out", tmp_path / f"alone_{source.name}"])
        assert code == 0, err
        expected = np.array(json.loads(out)["layers"]["output"]["eigenvalues"])
        got = np.array(document["layers"][f"{source.name}:output"]["eigenvalues"])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * expected[0])


def test_vit_mae_folder_is_probed_without_random_masking(invoke, image_folder, tmp_path):
    folder = tmp_path / "mae"
    torch.manual_seed(0)
    config = transformers.ViTMAEConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, image_size=16, patch_size=8, decoder_hidden_size=16,
                                       decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                                       decoder_intermediate_size=32)
    transformers.ViTMAEModel(config).save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(folder)
    runs = [invoke(["spectrum", folder, "--data", image_folder, "--out", tmp_path / f"o{i}", *QUIET]) for i in range(2)]
    assert all(code == 0 for code, _, _ in runs), runs[0][2]
    first, second = (json.loads(out) for _, out, _ in runs)
    assert first["source"]["image_size"] == 16 and first["source"]["arch"] == "ViTMAEModel"
    assert any("mask_ratio=0" in note for note in first["source"]["load"]["notes"])
    # equal up to float32 summation order (the kept patches come in a random order); random
    # masking of 75% of the patches would change the spectrum entirely
    a, b = (np.array(r["layers"]["output"]["eigenvalues"]) for r in (first, second))
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9 * a.max())


def _with_custom_code(source, folder, module: str, class_name: str, code: str):
    """A copy of the ``source`` folder whose config's auto_map names ``module.class_name``, defined by ``code``."""
    folder.mkdir()
    for item in source.iterdir():
        (folder / item.name).write_bytes(item.read_bytes())
    (folder / f"{module}.py").write_text(code)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModel": f"{module}.{class_name}"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_auto_map_custom_code_is_refused_and_never_imported(invoke, bert_folder, tmp_path):
    marker = tmp_path / "IMPORTED"
    folder = _with_custom_code(bert_folder, tmp_path / "custom", "modeling_evil", "EvilModel",
                               f"open({str(marker)!r}, 'w').write('ran')\n")
    data = tmp_path / "t.txt"
    data.write_text("\n".join(_sentences(4)))
    code, out, err = invoke(["spectrum", folder, "--data", data, "--out", tmp_path / "o", *QUIET])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "custom code" in err and "--trust-checkpoint" in err
    assert not marker.exists()


def test_missing_transformers_is_named_in_one_line(invoke, bert_folder, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    data = tmp_path / "t.txt"
    data.write_text("\n".join(_sentences(4)))
    code, _, err = invoke(["spectrum", bert_folder, "--data", data, "--out", tmp_path / "o", "--quiet"])
    assert code == 2 and err.count("\n") == 1
    assert 'pip install "collapse-probe[hf]"' in err and "transformers" in err


def test_text_data_needs_a_tokenizer_and_a_text_model_needs_text(invoke, bert_folder, image_folder, checkpoints,
                                                                 tmp_path):
    data = tmp_path / "t.txt"
    data.write_text("\n".join(_sentences(4)))
    code, _, err = invoke(["spectrum", checkpoints["pt"], "--arch", "resnet18", "--data", data, *QUIET])
    assert code == 2 and "no tokenizer" in err
    code, _, err = invoke(["spectrum", bert_folder, "--data", image_folder, *QUIET])
    assert code == 2 and "text model" in err


def test_trust_checkpoint_runs_the_folders_own_model_code(invoke, bert_folder, tmp_path):
    """With --trust-checkpoint the auto_map class is imported from the folder and probed: here a
    BertModel subclass whose output is halved, so its spectrum is a quarter of the plain one.
    (transformers copies the code into its modules cache, named after the folder: a fresh name
    each run keeps an older copy from being used.)"""
    marker = tmp_path / "IMPORTED"
    folder = _with_custom_code(
        bert_folder, tmp_path / f"half_bert_{uuid.uuid4().hex[:12]}", "modeling_half", "HalfBert",
        "from transformers import BertModel\n"
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "class HalfBert(BertModel):\n"
        "    def forward(self, *args, **kwargs):\n"
        "        out = super().forward(*args, **kwargs)\n"
        "        out.last_hidden_state = out.last_hidden_state * 0.5\n"
        "        return out\n",
    )
    data = tmp_path / "t.txt"
    data.write_text("\n".join(_sentences(12)))
    code, _, err = invoke(["spectrum", bert_folder, "--data", data, "--out", tmp_path / "plain", *QUIET])
    assert code == 0, err
    code, _, err = invoke(["spectrum", folder, "--data", data, "--trust-checkpoint", "--out", tmp_path / "half",
                           *QUIET])
    assert code == 0, err
    assert marker.exists()
    plain = json.loads((tmp_path / "plain" / "spectrum.json").read_text())
    half = json.loads((tmp_path / "half" / "spectrum.json").read_text())
    layer = next(iter(plain["layers"])) if "layers" in plain else None
    plain_values = np.array((plain["layers"][layer] if layer else plain)["eigenvalues"])
    half_values = np.array((half["layers"][layer] if layer else half)["eigenvalues"])
    np.testing.assert_allclose(half_values, plain_values / 4, rtol=0, atol=1e-9 * plain_values[0])


def _edit_json(path, **changes):
    document = json.loads(path.read_text())
    document.update(changes)
    path.write_text(json.dumps(document))


def test_a_scalar_image_mean_and_std_apply_to_every_channel(invoke, image_folder, tmp_path):
    """preprocessor_config.json with "image_mean": 0.5, "image_std": 0.25 (issue 17 item 10): the
    processor's own pipeline, and --image-size's transform with (x / 255 - 0.5) / 0.25 on each channel."""
    folder = _dino_folder(tmp_path / "dino")
    _edit_json(folder / "preprocessor_config.json", image_mean=0.5, image_std=0.25)
    images = _readable_images(image_folder)
    code, out, err = invoke(["spectrum", folder, "--data", image_folder, "--out", tmp_path / "o", *QUIET])
    assert code == 0, err
    report = json.loads(out)
    assert any(n.startswith("image_mean 0.5 of preprocessor_config.json applied to each of the 3 channels")
               for n in report["source"]["load"]["notes"])
    as_lists = transformers.BitImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 24, "width": 24},
                                              image_mean=[0.5] * 3, image_std=[0.25] * 3)
    expected = _numpy_eigenvalues(folder, as_lists(images=images, return_tensors="pt")["pixel_values"])
    np.testing.assert_allclose(report["layers"]["output"]["eigenvalues"], expected, rtol=0, atol=1e-5 * expected[0])

    code, out, err = invoke(["spectrum", folder, "--data", image_folder, "--image-size", "32", "--out", tmp_path / "o2",
                             *QUIET])
    assert code == 0, err
    prepare = T.Compose([T.Resize(36, interpolation=T.InterpolationMode.BILINEAR, antialias=True), T.CenterCrop(32),
                         T.PILToTensor()])
    x = (torch.stack([prepare(image) for image in images]).double() / 255 - 0.5) / 0.25
    expected = _numpy_eigenvalues(folder, x.float())
    np.testing.assert_allclose(json.loads(out)["layers"]["output"]["eigenvalues"], expected, rtol=0,
                               atol=1e-5 * expected[0])


def test_weights_that_do_not_fit_the_config_are_one_line_naming_the_first_tensor(invoke, image_folder, tmp_path):
    """Saved with an MLP of 64 (mlp_ratio 4), config.json edited to mlp_ratio 2 (issue 17 item 10):
    exit 2 naming the tensor and both shapes, nothing from transformers' own load report; with
    --allow-partial the probe runs and the warning names what stays random."""
    folder = _dino_folder(tmp_path / "dino")
    _edit_json(folder / "config.json", mlp_ratio=2)
    code, out, err = invoke(["spectrum", folder, "--data", image_folder, "--out", tmp_path / "o", *QUIET])
    assert code == 2 and out == ""
    (line,) = err.strip().splitlines()
    assert line.startswith("Error: ") and "do not fit config.json" in line
    assert "encoder.layer.0.mlp.fc1.weight is (64, 16) in the weights but the config makes it (32, 16)" in line
    assert "3 tensors differ in shape" in line and "--allow-partial" in line
    code, out, err = invoke(["spectrum", folder, "--data", image_folder, "--allow-partial", "--out", tmp_path / "o",
                             *QUIET])
    assert code == 0, err
    assert "3 shape-mismatched keys (encoder.layer.0.mlp.fc1.weight (64, 16) vs (32, 16)" in err
    load = json.loads(out)["source"]["load"]
    assert load["partial"] is True and (load["n_loaded"], load["n_expected"]) == (22, 25)
