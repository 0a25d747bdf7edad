"""The converter: layout, key accounting, checkpoint variants, refusals, and all-or-nothing output."""

from __future__ import annotations

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
import torch

from funasr_nano_mlx.convert import convert
from funasr_nano_mlx.files import sha256, stamp
from funasr_nano_mlx.errors import UserError
from funasr_nano_mlx.transcribe import load, transcribe
from tests.reference import Reference, write_upstream_dir


def weights_of(model_dir):
    return mx.load(str(model_dir / "model.safetensors"))


def test_layout_and_provenance(tiny_upstream, tiny_bf16):
    config = json.loads((tiny_bf16 / "config.json").read_text())
    assert config["model_type"] == "fun_asr_nano"
    assert config["audio_encoder_conf"]["sanm_shfit"] == 0  # upstream spelling kept for mlx-audio
    assert config["text_config"]["eos_token_id"] == 151645
    assert config["llm_dtype"] == "bf16"
    provenance = config["conversion"]
    assert provenance["model_pt_sha256"] == sha256(tiny_upstream / "model.pt")
    assert provenance["dtype"] == "bfloat16" and provenance["package_version"]
    assert (tiny_bf16 / "Qwen3-0.6B" / "tokenizer.json").is_file()
    assert not list(tiny_bf16.parent.glob("*.tmp"))

    weights = weights_of(tiny_bf16)
    state = torch.load(tiny_upstream / "model.pt", weights_only=True)["state_dict"]
    assert set(weights) == set(state) - {"llm.lm_head.weight"}
    fsmn = "audio_encoder.encoders.0.self_attn.fsmn_block.weight"
    assert state[fsmn].shape == (64, 1, 11) and weights[fsmn].shape == (64, 11, 1)
    assert all(w.dtype == mx.bfloat16 for w in weights.values())
    # bf16 checkpoint -> bf16 MLX: bit-exact copies.
    key = "llm.model.layers.0.mlp.down_proj.weight"
    np.testing.assert_array_equal(np.array(weights[key].astype(mx.float32)), state[key].float().numpy())


@pytest.mark.parametrize("variant", [dict(wrapped=False), dict(with_ctc=True)])
def test_checkpoint_variants_give_the_same_weights(tmp_path, tiny_bf16, variant):
    """The bare (ModelScope-style) layout and a copy carrying the CTC head convert to the same model (the
    latter plus its CTC head, kept: tests/test_ctc.py)."""
    upstream = write_upstream_dir(tmp_path / "upstream", "tiny", seed=0, **variant)
    out = convert(upstream, tmp_path / "mlx")
    ours, expected = weights_of(out), weights_of(tiny_bf16)
    ctc_keys = {k for k in ours if k.startswith(("ctc_decoder.", "ctc."))}
    assert len(ctc_keys) == (86 if variant.get("with_ctc") else 0)
    assert ours.keys() - ctc_keys == expected.keys()
    assert all(mx.array_equal(ours[k], expected[k]) for k in expected)
    config = json.loads((out / "config.json").read_text())
    assert config["conversion"]["dropped_ctc_tensors"] == 0
    assert config["timestamps"] == variant.get("with_ctc", False)


def test_untied_head_under_tied_config_follows_upstream(tmp_path, clips):
    """A stored head that differs from the embeddings: upstream's shared Parameter ends up holding
    the head (loaded last), so both roles use it; our tokens must equal the reference's."""
    upstream = write_upstream_dir(tmp_path / "upstream", "tiny", seed=1, untie_head=True)
    out = convert(upstream, tmp_path / "mlx", dtype="float32")
    assert any("lm_head differs" in n for n in json.loads((out / "config.json").read_text())["conversion"]["notes"])
    model, tokenizer = load(out)
    ref_ids, _ = Reference(upstream).transcribe(clips["1s"], max_new_tokens=32)
    ours = transcribe(model, tokenizer, clips["1s"], max_new_tokens=32).token_ids
    assert ours == ref_ids[: len(ours)] and len(ours) >= len(ref_ids) - 1


def test_untied_config_keeps_the_head(tmp_path, clips):
    upstream = write_upstream_dir(tmp_path / "upstream", "tiny", seed=1, untie_head=True)
    qwen_config = upstream / "Qwen3-0.6B" / "config.json"
    qwen_config.write_text(json.dumps({**json.loads(qwen_config.read_text()), "tie_word_embeddings": False}))
    out = convert(upstream, tmp_path / "mlx", dtype="float32")
    assert "llm.lm_head.weight" in weights_of(out)
    model, tokenizer = load(out)
    ref_ids, _ = Reference(upstream).transcribe(clips["1s"], max_new_tokens=32)
    ours = transcribe(model, tokenizer, clips["1s"], max_new_tokens=32).token_ids
    assert ours == ref_ids[: len(ours)] and len(ours) >= len(ref_ids) - 1


def _edited_copy(tmp_path, tiny_upstream, edit):
    upstream = tmp_path / "edited"
    shutil.copytree(tiny_upstream, upstream)
    state = torch.load(upstream / "model.pt", weights_only=True)
    edit(state["state_dict"])
    torch.save(state, upstream / "model.pt")
    return upstream


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda sd: sd.pop("audio_adaptor.linear1.bias"), "missing audio_adaptor.linear1.bias"),
        (lambda sd: sd.update({"audio_encoder.extra.weight": torch.zeros(2)}), "unknown audio_encoder.extra.weight"),
        (lambda sd: sd.update({"audio_adaptor.linear1.bias": torch.zeros(3)}), "audio_adaptor.linear1.bias"),
    ],
    ids=["missing", "unknown", "wrong-shape"],
)
def test_keys_must_match_the_configuration(tmp_path, tiny_upstream, edit, message):
    upstream = _edited_copy(tmp_path, tiny_upstream, edit)
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        convert(upstream, tmp_path / "mlx")
    assert not (tmp_path / "mlx").exists() and not (tmp_path / "mlx.tmp").exists()


def test_refusals_leave_nothing_behind(tmp_path, tiny_upstream):
    with pytest.raises(UserError, match="float16"):
        convert(tiny_upstream, tmp_path / "fp16", dtype="float16")
    broken = tmp_path / "truncated"
    shutil.copytree(tiny_upstream, broken)
    data = (broken / "model.pt").read_bytes()
    (broken / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        convert(broken, tmp_path / "out")
    (tmp_path / "exists").mkdir()
    with pytest.raises(UserError, match="already exists"):
        convert(tiny_upstream, tmp_path / "exists")
    with pytest.raises(UserError, match="not found"):
        convert(tmp_path / "nowhere", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "truncated"]


def test_a_checkpoint_hashed_before_is_not_read_again_until_it_changes(tmp_path, tiny_upstream, monkeypatch):
    """Given the SHA-256 and the stamp model.pt had when it was hashed (as the download stage records them),
    conversion does not hash it again (2 GB for the real model); once the file was written since, it does,
    and refuses other bytes."""
    import funasr_nano_mlx.convert as convert_module

    src = tmp_path / "src"
    shutil.copytree(tiny_upstream, src)
    digest, hashed_stamp = sha256(src / "model.pt"), stamp(src / "model.pt")
    hashed = []
    monkeypatch.setattr(convert_module, "sha256", lambda path: hashed.append(path.name) or sha256(path))
    convert(src, tmp_path / "a", expected_sha256=digest, hashed_stamp=hashed_stamp)
    assert hashed == []
    data = bytearray((src / "model.pt").read_bytes())
    data[-1] ^= 1  # other bytes, the same size
    (src / "model.pt").write_bytes(bytes(data))
    with pytest.raises(UserError, match="has SHA-256"):
        convert(src, tmp_path / "b", expected_sha256=digest, hashed_stamp=hashed_stamp)
    assert hashed == ["model.pt"] and not (tmp_path / "b").exists()


def test_interrupted_write_leaves_nothing(tmp_path, tiny_upstream, monkeypatch):
    import funasr_nano_mlx.convert as convert_module

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(convert_module, "save_config", fail)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_upstream, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda cfg: "", "does not describe a FunASRNano model"),
        (lambda cfg: cfg.replace("fs: 16000", "fs: 8000"), "unsupported frontend_conf"),
        (lambda cfg: cfg.replace("cmvn_file: null", "cmvn_file: am.mvn"), "unsupported frontend_conf"),
        (lambda cfg: cfg + "\nmax_length: 100\n", "sets max_length"),
    ],
    ids=["empty", "8khz", "cmvn", "max-length"],
)
def test_unsupported_upstream_settings_are_refused(tmp_path, tiny_upstream, edit, message):
    """Settings the official code would honour but this port does not implement must not convert silently."""
    upstream = tmp_path / "upstream"
    shutil.copytree(tiny_upstream, upstream)
    config = upstream / "config.yaml"
    edited = edit(config.read_text())
    assert edited != config.read_text()
    config.write_text(edited)
    with pytest.raises(UserError, match=message):
        convert(upstream, tmp_path / "mlx")
    assert not (tmp_path / "mlx").exists()
