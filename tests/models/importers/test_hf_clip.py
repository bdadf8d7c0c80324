"""Hugging Face CLIP and SigLIP directories: medvl gives transformers' own embeddings."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medvl.errors import CheckpointError, ModelError
from medvl.models import MedVLModel
from medvl.models.importers import detect_format, import_model


def _tiny_clip(tokenizer_dir, out):
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = CLIPConfig(
        projection_dim=24,
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 77,
                     "eos_token_id": tok.eos_token_id, "bos_token_id": tok.bos_token_id,
                     "pad_token_id": tok.pad_token_id},
        logit_scale_init_value=math.log(1 / 0.05),
    )
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok


def _tiny_siglip(tokenizer_dir, out):
    from transformers import AutoTokenizer, SiglipConfig, SiglipModel

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = SiglipConfig(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                     "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id},
    )
    model = SiglipModel(config).eval()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(117.0))  # SigLIP's learned scale exceeds CLIP's 100
        model.logit_bias.fill_(-12.5)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return model, tok


def _features(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_directory_matches_transformers(tmp_path, clip_tokenizer, texts, same_embeddings, processor_json):
    ref, tok = _tiny_clip(clip_tokenizer, tmp_path / "src")
    processor_json(tmp_path / "src", image_processor_type="CLIPImageProcessor", do_center_crop=True,
                   crop_size={"height": 32, "width": 32}, size={"shortest_edge": 32}, resample=3,
                   image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    assert detect_format(tmp_path / "src") == "hf-clip"
    out = import_model(tmp_path / "src", tmp_path / "m", licence="MIT")
    model = MedVLModel.from_pretrained(out)
    x = torch.randn(3, 3, 32, 32)
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        same_embeddings(model.encode_image(x).embeds, _features(ref.get_image_features(pixel_values=x)))
        tokens = model.tokenize(texts)
        assert torch.equal(tokens["input_ids"], enc["input_ids"])  # the source's own tokenizer
        same_embeddings(model.encode_text(**tokens).embeds,
                        _features(ref.get_text_features(**enc)))
    assert float(model.logit_scale.detach().exp()) == pytest.approx(20.0, rel=1e-5)
    config = json.loads((out / "config.json").read_text())
    assert config["zeroshot"]["scoring"] == "classes"
    assert config["model"]["image"]["name"] == "hf-clip" and config["model"]["head_bias"] is False
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["format"] == "hf-clip" and prov["licence"] == "MIT"
    assert str(tmp_path) not in (out / "provenance.json").read_text()  # no local paths recorded
    assert "sha256" in prov["source"]


def test_clip_patch_tokens_share_the_projection(tmp_path, clip_tokenizer):
    """Local embeddings are CLIP's patch states through post_layernorm and the same projection."""
    ref, _ = _tiny_clip(clip_tokenizer, tmp_path / "src")
    model = MedVLModel.from_pretrained(import_model(tmp_path / "src", tmp_path / "m"))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model.encode_image(x)
        hidden = ref.vision_model(pixel_values=x).last_hidden_state
        expected = ref.visual_projection(ref.vision_model.post_layernorm(hidden[:, 1:]))
    assert out.grid == (4, 4) and torch.allclose(out.local_embeds, expected, atol=1e-5)
    assert out.attention is not None and torch.allclose(out.attention.sum(-1), torch.ones(1))


@pytest.mark.parametrize("tokenizer", ["siglip_tokenizer", "siglip_spm_tokenizer"])
def test_siglip_directory_matches_transformers(tmp_path, tokenizer, request, texts, same_embeddings,
                                               processor_json):
    ref, tok = _tiny_siglip(request.getfixturevalue(tokenizer), tmp_path / "src")
    processor_json(tmp_path / "src", image_processor_type="SiglipImageProcessor", do_resize=True,
                   size={"height": 32, "width": 32}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    assert detect_format(tmp_path / "src") == "hf-siglip"
    model = MedVLModel.from_pretrained(import_model(tmp_path / "src", tmp_path / "m"))
    x = torch.randn(2, 3, 32, 32)
    # SigLIP's recipe: pad to max_length, no mask (SigLIP was trained without one; transformers
    # 5's SiglipTokenizer returns one, the tiny fast tokenizer does not: neither reaches the model)
    enc = tok(texts, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        same_embeddings(model.encode_image(x).embeds, _features(ref.get_image_features(pixel_values=x)))
        same_embeddings(model.embed_texts(texts).embeds,
                        _features(ref.get_text_features(input_ids=enc["input_ids"])))
        # a batch padded only to its longest report is re-padded to max_length first
        short = model.text_encoder.tokenizer(["No effusion."], padding="longest", return_tensors="pt",
                                             return_attention_mask=True)
        assert short["input_ids"].shape[1] < 16
        again = model.encode_text(short["input_ids"], short["attention_mask"]).embeds
        full = tok(["No effusion."], padding="max_length", max_length=16, return_tensors="pt")
        same_embeddings(again, _features(ref.get_text_features(input_ids=full["input_ids"])))
    assert float(model.logit_scale.detach().exp()) == pytest.approx(117.0, rel=1e-5)
    assert float(model.logit_bias.detach()) == pytest.approx(-12.5)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["zeroshot"]["scoring"] == "sigmoid" and config["model"]["head"] == "identity"


def test_siglip_probe_attention_is_the_pooling_heads(tmp_path, siglip_tokenizer):
    """The token weighting SigLIP exposes is its pooling head's own attention map."""
    ref, _ = _tiny_siglip(siglip_tokenizer, tmp_path / "src")
    model = MedVLModel.from_pretrained(import_model(tmp_path / "src", tmp_path / "m"))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model.encode_image(x)
        hidden = ref.vision_model(pixel_values=x).last_hidden_state
        head = ref.vision_model.head if hasattr(ref.vision_model, "head") else ref.vision_model.vision_model.head
        probe = head.probe.repeat(2, 1, 1)
        _, weights = head.attention(probe, hidden, hidden, need_weights=True, average_attn_weights=True)
    assert out.grid == (4, 4)
    assert torch.allclose(out.attention, weights[:, 0], atol=1e-5)


def test_composite_directory_as_a_pretrained_tower(tmp_path, clip_tokenizer, same_embeddings):
    """`image: {name: hf-clip, pretrained: <CLIPModel dir>}` reads the vision half of a
    composite checkpoint (no TypeError about add_pooling_layer)."""
    from medvl.models import build_model

    ref, _ = _tiny_clip(clip_tokenizer, tmp_path / "src")
    model = build_model({"embed_dim": 8, "image": {"name": "hf-clip", "in_channels": 3,
                                                   "pretrained": str(tmp_path / "src")},
                         "text": {"name": "hf-clip", "path": str(tmp_path / "src"), "max_length": 77}}).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = model.image_encoder(x).pooled
        theirs = ref.vision_model(pixel_values=x).pooler_output
    same_embeddings(ours, theirs)


@pytest.mark.parametrize("name", ["hf-dinov2", "hf-siglip", "hf-clip", "hf-vit"])
def test_loading_errors_name_the_directory(tmp_path, name):
    from medvl.models import build_model

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelError) as err:
        build_model({"image": {"name": name, "in_channels": 3, "pretrained": str(bad)}})
    assert str(bad) in str(err.value)


def test_a_directory_of_another_family_is_refused(tmp_path, clip_tokenizer):
    from medvl.models import build_model

    _tiny_clip(clip_tokenizer, tmp_path / "src")
    with pytest.raises(CheckpointError, match="'clip' model"):
        build_model({"image": {"name": "hf-dinov2", "in_channels": 3, "pretrained": str(tmp_path / "src")}})


def test_real_radiograph_through_clip_and_siglip(tmp_path, clip_tokenizer, siglip_tokenizer, processor_json,
                                                 source_input, same_embeddings):
    ref, _ = _tiny_clip(clip_tokenizer, tmp_path / "clip")
    clip_mean, clip_std = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    processor_json(tmp_path / "clip", do_center_crop=True, crop_size={"height": 32, "width": 32},
                   size={"shortest_edge": 32}, resample=3, image_mean=clip_mean, image_std=clip_std)
    pipe, x = source_input(import_model(tmp_path / "clip", tmp_path / "m1"), size=32, mean=clip_mean, std=clip_std)
    assert pipe.data_config.fit == "crop" and pipe.data_config.resample == "bicubic"
    with torch.no_grad():
        same_embeddings(pipe.model.encode_image(x[None]).embeds, _features(ref.get_image_features(pixel_values=x[None])))
    ref, _ = _tiny_siglip(siglip_tokenizer, tmp_path / "siglip")
    processor_json(tmp_path / "siglip", size={"height": 32, "width": 32}, resample=3, image_mean=[0.5] * 3,
                   image_std=[0.5] * 3)
    pipe, x = source_input(import_model(tmp_path / "siglip", tmp_path / "m2"), size=32, mean=[0.5] * 3, std=[0.5] * 3)
    assert pipe.data_config.fit == "stretch"
    with torch.no_grad():
        same_embeddings(pipe.model.encode_image(x[None]).embeds, _features(ref.get_image_features(pixel_values=x[None])))


def test_cli_import_then_info(tmp_path, clip_tokenizer, capsys):
    """`medvl model import` as a new user runs it: one line of result, errors as one line, exit 2."""
    from medvl.cli import main

    _tiny_clip(clip_tokenizer, tmp_path / "src")
    assert main(["model", "import", str(tmp_path / "src"), "--out", str(tmp_path / "m"),
                 "--licence", "MIT", "--name", "tiny CLIP"]) == 0
    out = capsys.readouterr().out
    assert "tiny CLIP (hf-clip)" in out and "classes" in out and "MIT" in out
    assert main(["model", "info", str(tmp_path / "m")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["provenance"]["licence"] == "MIT" and info["zeroshot"]["scoring"] == "classes"
    # an existing directory is not overwritten; a bad source is one line, exit 2
    assert main(["model", "import", str(tmp_path / "src"), "--out", str(tmp_path / "m")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["model", "import", str(tmp_path / "nope"), "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert main(["model", "import", str(tmp_path / "src"), "--out", str(tmp_path / "m3"), "--text", "x"]) == 2
    assert "takes no option 'text'" in capsys.readouterr().err


def _prompt_file(tmp_path, findings):
    """A prompt set of one positive and one negative sentence per finding."""
    import yaml

    doc = {"name": "two", "modalities": ["CR"], "findings": {
        f: {"names": [f], "use_templates": False, "positive": [pos], "negative": [neg]}
        for f, (pos, neg) in findings.items()}}
    path = tmp_path / "prompts.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


FINDINGS = {"pleural_effusion": ("pleural effusion", "no pleural effusion"),
            "cardiomegaly": ("mild cardiomegaly", "heart size is normal"),
            "edema": ("there is pulmonary edema", "no edema")}


def test_clip_zero_shot_is_clips_softmax_over_classes(tmp_path, clip_tokenizer, radiograph):
    """classify's scores are CLIPModel's logits_per_image through a softmax over the findings."""
    import medvl

    ref, tok = _tiny_clip(clip_tokenizer, tmp_path / "src")
    pipe = medvl.load(import_model(tmp_path / "src", tmp_path / "m"))
    prompts = _prompt_file(tmp_path, FINDINGS)
    result = pipe.classify(radiograph, prompts=str(prompts))
    assert result.scoring == "classes" and not result.calibrated
    x = pipe.prepare(radiograph)[None]
    enc = tok([p for p, _ in FINDINGS.values()], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = ref(pixel_values=x, **enc).logits_per_image.softmax(dim=1)[0]
    got = torch.tensor([result.scores[f] for f in FINDINGS], dtype=torch.float32)
    assert torch.allclose(got, expected, atol=1e-4) and abs(float(got.sum()) - 1) < 1e-5


def test_siglip_zero_shot_is_sigmoid_with_the_learned_bias(tmp_path, siglip_tokenizer, radiograph):
    """Each finding: sigmoid(exp(logit_scale) * cos + logit_bias), SiglipModel's own logits,
    with MedSigLIP-like scale above CLIP's cap of 100 kept."""
    import medvl

    ref, tok = _tiny_siglip(siglip_tokenizer, tmp_path / "src")
    with torch.no_grad():
        ref.logit_bias.fill_(-0.5)  # a bias that leaves the sigmoid informative
        ref.logit_scale.fill_(math.log(117.0))
    ref.save_pretrained(tmp_path / "src")
    pipe = medvl.load(import_model(tmp_path / "src", tmp_path / "m"))
    result = pipe.classify(radiograph, prompts=str(_prompt_file(tmp_path, FINDINGS)))
    assert result.scoring == "sigmoid"
    x = pipe.prepare(radiograph)[None]
    ids = tok([p for p, _ in FINDINGS.values()], padding="max_length", max_length=16, truncation=True,
              return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = torch.sigmoid(ref(pixel_values=x, input_ids=ids).logits_per_image[0])
    got = torch.tensor([result.scores[f] for f in FINDINGS], dtype=torch.float32)
    assert torch.allclose(got, expected, atol=1e-4)


def test_hub_names_resolve_through_the_cache_only_when_offline(tmp_path, monkeypatch):
    """A hub name is a real loading path for users with a network; offline it is a clear
    error (no hang), unless the repository is in the local cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(CheckpointError, match="hub repository is not available"):
        import_model("google/medsiglip-448", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_text_towers_and_saved_directories_name_the_directory_on_any_failure(tmp_path, clip_tokenizer):
    from medvl.models import build_model

    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "config.json").write_text('{"model_type": "no-such-model"}')
    for name in ("hf", "hf-clip", "hf-siglip", "llm"):
        with pytest.raises(ModelError) as err:
            build_model({"image": {"name": "resnet10", "width": 8},
                         "text": {"name": name, "path": str(bad), "tokenizer": str(clip_tokenizer)}})
        assert str(bad) in str(err.value), name
    # a saved directory whose recorded architecture transformers refuses
    _tiny_clip(clip_tokenizer, tmp_path / "src")
    out = import_model(tmp_path / "src", tmp_path / "m")
    cfg = json.loads((out / "config.json").read_text())
    cfg["image_hf_config"]["model_type"] = "no-such-model"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError) as err:
        MedVLModel.from_pretrained(out)
    assert str(out) in str(err.value)
