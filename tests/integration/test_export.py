"""Exports of a LoRA-trained tiny Gemma 3: merged HF safetensors (our loader, Tunix, transformers)
and the upstream-layout Orbax checkpoint for Kaggle Models (Tunix's create_model_from_checkpoint).

Tolerance: 1e-4 on logits, float32 on CPU (measured differences are ~3e-7 at logit scales ~1).
transformers is compared through stored references (tests/fixtures/reference/export/, made by
scripts/make_export_reference.py in the `make bench` environment), so no test needs torch.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from kaggle_lib import evidence, export
from kaggle_lib.models import convert, kaggle_format, lora_merge
from scripts import make_export_reference as reference
from tests import training_helpers as th

TOL = 1e-4
ALPHA = 8.0
# 20 tokens: longer than the tiny sliding window (8), so the window is exercised.
TOKENS = np.array([[2, 17, 40, 33, 101, 7, 250, 64, 12, 99, 300, 45, 8, 9, 77, 120, 5, 61, 200, 31]],
                  dtype=np.int32)


def merged_model(model: nnx.Module) -> nnx.Module:
    """A plain Gemma3 holding the LoRA model's merged weights."""
    return lora_merge.build_model(model.config, lora_merge.merge_lora_params(model, ALPHA))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    """The registry's tiny Gemma 3 after 3 real LoRA SFT steps (high LR: a visible delta)."""
    mesh = th.single_device_mesh()
    base = th.build_model(th.tiny_config())
    model, result = th.train_tiny(mesh, base, steps=3, learning_rate=3e-2)
    assert result.steps_done == 3
    out = tmp_path_factory.mktemp("export")
    exported = export.export_model(model, out, tokenizer=th.tiny_tokenizer(), alpha=ALPHA,
                                   check_tokens=TOKENS)
    return model, base, exported, out


def test_lora_training_changed_the_model(trained) -> None:
    model, base, _, _ = trained
    # Otherwise the comparisons below could not tell a merged model from the base.
    assert export.max_abs_diff(export.forward_logits(model, TOKENS),
                               export.forward_logits(base, TOKENS)) > 100 * TOL
    assert lora_merge.lora_rank(model) == 4


def test_merged_model_matches_lora_model(trained) -> None:
    model, _, _, _ = trained
    merged = merged_model(model)
    assert lora_merge.lora_rank(merged) is None
    assert not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.iter_graph(merged))
    diff = export.max_abs_diff(export.forward_logits(merged, TOKENS), export.forward_logits(model, TOKENS))
    assert diff <= TOL


def test_hf_export_loads_in_our_loader_with_same_logits(trained) -> None:
    from kaggle_lib.models.loader import load_model

    model, _, exported, _ = trained
    hf_dir = exported.hf_dir
    assert {p.name for p in hf_dir.iterdir()} >= {"model.safetensors", "config.json",
                                                  "generation_config.json", "tokenizer.model"}
    loaded = load_model("gemma3-tiny", source="local", path=str(hf_dir), dtype="float32")
    assert loaded.tokenizer.vocab_size == th.tiny_tokenizer().vocab_size
    diff = export.max_abs_diff(export.forward_logits(loaded.model, TOKENS),
                               export.forward_logits(model, TOKENS))
    assert diff <= TOL
    assert exported.hf_max_logit_diff <= TOL


@pytest.mark.parametrize("name", sorted(reference.MODELS))
def test_hf_export_gives_transformers_the_tensors_behind_its_stored_logits(
        name: str, tmp_path: Path) -> None:
    """transformers' Gemma3ForCausalLM, given the config and tensors we export (stored when the
    reference was made), produced logits equal to our model's; today's export must still
    write that config and those tensors. `six_layer`: 5 sliding + 1 global layer, so both
    rope bases and the layer pattern reach transformers."""
    from safetensors.numpy import load_file

    stored = reference.OUT_DIR / name
    model = reference.lora_model(name)
    hf_dir = export.save_hf_safetensors(model, tmp_path / "hf", tokenizer=th.tiny_tokenizer(),
                                        alpha=reference.ALPHA)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config == json.loads((stored / "config.json").read_text()), \
        f"the exported config.json changed; regenerate {stored} (scripts/make_export_reference.py)"
    if name == "six_layer":
        assert config["layer_types"].count("full_attention") == 1
        assert config["layer_types"][-1] == "full_attention"
    want = json.loads((stored / "tensors.json").read_text())
    got = reference.fingerprint(load_file(str(hf_dir / "model.safetensors")))
    assert set(got) == set(want)
    for tensor, fp in want.items():
        assert got[tensor]["shape"] == fp["shape"], tensor
        assert got[tensor]["sum"] == pytest.approx(fp["sum"], rel=1e-5, abs=1e-4), tensor
        assert got[tensor]["abs_sum"] == pytest.approx(fp["abs_sum"], rel=1e-5), tensor
        assert [i for i, _ in got[tensor]["samples"]] == [i for i, _ in fp["samples"]]
        np.testing.assert_allclose([v for _, v in got[tensor]["samples"]],
                                   [v for _, v in fp["samples"]], rtol=0, atol=1e-6,
                                   err_msg=tensor)
    logits = np.load(stored / "reference.npz")
    np.testing.assert_array_equal(logits["tokens"], reference.TOKENS)
    assert export.max_abs_diff(logits["logits"],
                               export.forward_logits(model, reference.TOKENS)) <= TOL


def test_tunix_merge_helper_agrees_with_qwix_formula(trained) -> None:
    """The HF file comes from Tunix's save_lora_merged_model_as_safetensors; our own merge
    (qwix's einsum formula, used for the Orbax export) must give the same tensors."""
    from safetensors.numpy import load_file

    model, _, exported, _ = trained
    written = load_file(str(exported.hf_dir / "model.safetensors"))
    ours = convert.hf_state_dict(lora_merge.merge_lora_params(model, ALPHA))
    assert set(written) == set(ours)
    for name, value in ours.items():
        assert written[name].shape == value.shape, name
        np.testing.assert_allclose(written[name], value, rtol=0, atol=1e-6, err_msg=name)


def test_orbax_export_restores_identical_params_with_tunix_loader(trained) -> None:
    model, _, exported, _ = trained
    assert (exported.orbax_dir / "tokenizer.model").is_file()
    assert not list(exported.orbax_dir.rglob("*.safetensors"))  # the Kaggle Model route
    restored = kaggle_format.load_upstream_checkpoint(exported.orbax_dir, model.config, dtype=jnp.float32)
    want = lora_merge.merge_lora_params(model, ALPHA)
    got = {tuple(p): np.asarray(jax.device_get(v.get_value()))
           for p, v in nnx.iter_graph(restored) if isinstance(v, nnx.Param)}
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=str(key))
    assert exported.orbax_max_logit_diff <= TOL


def test_export_info_and_manifest_entry(trained) -> None:
    _, _, exported, out = trained
    info = json.loads((out / export.EXPORT_INFO).read_text())
    assert info["lora_rank"] == 4 and info["lora_alpha"] == ALPHA
    assert info["hf_max_logit_diff"] <= info["tolerance"] == TOL
    entry = exported.to_manifest(out, step=3)
    assert entry["hf"]["path"] == "hf" and entry["orbax"]["format"] == "orbax-gemma3-upstream"
    # what the pipeline's export stage writes must pass the manifest schema
    record = evidence.RunRecord(out / "record")
    record.start("r1", "", "configs/cpu_tiny.yaml")
    record.update_manifest(exports=entry)
    assert record.read_manifest()["exports"]["hf"]["step"] == 3


@pytest.mark.parametrize("factory", ["gemma3_270m", "gemma3_1b_it", "gemma3_4b_pt", "gemma3_27b_pt"])
def test_hf_config_round_trips_through_hf_compat(factory: str) -> None:
    from tunix.models.gemma3 import model as g3

    from kaggle_lib.models.hf_compat import tunix_config_from_hf

    config = getattr(g3.ModelConfig, factory)()
    family, back = tunix_config_from_hf(export.hf_config(config, eos_ids=(1, 106)),
                                        param_dtype=config.param_dtype)
    assert family == "gemma3"
    for field in ("num_layers", "num_embed", "embed_dim", "hidden_dim", "num_heads", "head_dim",
                  "num_kv_heads", "sliding_window_size", "local_base_frequency",
                  "global_base_frequency", "local_scale_factor", "global_scale_factor",
                  "query_pre_attn_norm"):
        assert getattr(back, field) == getattr(config, field), field


def test_lora_model_without_alpha_and_other_families_are_refused(trained, tmp_path: Path) -> None:
    model, _, _, _ = trained
    with pytest.raises(export.ExportError, match="pass alpha"):
        export.save_hf_safetensors(model, tmp_path / "hf", tokenizer=th.tiny_tokenizer())
    with pytest.raises(export.ExportError, match="pass alpha"):
        export.save_orbax(model, tmp_path / "orbax")
    gemma2 = th.build_model(th.tiny_config("gemma2"), family="gemma2")
    with pytest.raises(export.ExportError, match="allowed: tunix.models.gemma3"):
        export.save_orbax(gemma2, tmp_path / "g2")
    with pytest.raises(export.ExportError, match="allowed: 'float32', 'bfloat16'"):
        export.save_hf_safetensors(merged_model(model), tmp_path / "x",
                                   dtype="float16")


def test_bfloat16_export_is_the_rounded_float32_export(trained, tmp_path: Path) -> None:
    from safetensors.flax import load_file as load_jax
    from safetensors.numpy import load_file

    model, _, exported, _ = trained
    bf16 = export.save_hf_safetensors(model, tmp_path / "bf16", tokenizer=th.tiny_tokenizer(),
                                      alpha=ALPHA, dtype="bfloat16")
    f32 = load_file(str(exported.hf_dir / "model.safetensors"))
    half = load_jax(str(bf16 / "model.safetensors"))  # the file's dtype, read without torch
    assert json.loads((bf16 / "config.json").read_text())["dtype"] == "bfloat16"
    for name, value in f32.items():
        assert half[name].dtype == jnp.bfloat16, name
        np.testing.assert_array_equal(np.asarray(half[name], np.float32),
                                      np.asarray(jnp.asarray(value, jnp.bfloat16), np.float32))



def _random_lora_model(config, seed: int = 0):
    from kaggle_lib.config import LoraSection
    from kaggle_lib.training.sft import apply_lora

    model = apply_lora(th.build_model(config), rank=2, alpha=4.0,
                       target_modules=LoraSection().target_modules)
    rng = np.random.default_rng(seed)
    for _, var in nnx.iter_graph(model):
        if isinstance(var, nnx.LoRAParam):
            value = var.get_value()
            var.set_value(jnp.asarray(rng.normal(0, 0.05, value.shape), value.dtype))
    return model


def test_bfloat16_model_exports_within_relative_tolerance(tmp_path: Path) -> None:
    """TPU runs keep bf16 weights: the check compares with a float32 copy of the merge."""
    model = _random_lora_model(th.tiny_config(param_dtype=jnp.bfloat16))
    result = export.export_model(model, tmp_path, tokenizer=th.tiny_tokenizer(), alpha=4.0,
                                 check_tokens=TOKENS)
    assert result.tolerance > TOL  # 1% of the largest logit
    assert result.hf_max_logit_diff <= result.tolerance
    assert result.orbax_max_logit_diff <= result.tolerance
    restored = kaggle_format.load_upstream_checkpoint(result.orbax_dir, model.config, dtype=jnp.bfloat16)
    want = lora_merge.merge_lora_params(model, 4.0)
    for path, var in nnx.iter_graph(restored):
        if isinstance(var, nnx.Param):
            got = np.asarray(var.get_value())
            assert got.dtype == want[tuple(path)].dtype == jnp.bfloat16
            np.testing.assert_array_equal(got, want[tuple(path)])


def test_a_wrong_layout_is_caught_by_the_export_check(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model = _random_lora_model(th.tiny_config())

    def swapped(w: np.ndarray) -> np.ndarray:  # heads and head_dim in the wrong order
        n, d, h = w.shape
        return np.ascontiguousarray(w.transpose(2, 0, 1).reshape(n * h, d))

    monkeypatch.setattr(convert, "_heads_to_rows", swapped)
    with pytest.raises(export.ExportError, match="do not reproduce the trained model"):
        export.export_model(model, tmp_path, tokenizer=th.tiny_tokenizer(), alpha=4.0,
                            check_tokens=TOKENS)
    info = json.loads((tmp_path / export.EXPORT_INFO).read_text())
    assert info["hf_max_logit_diff"] > info["tolerance"] >= info["orbax_max_logit_diff"]
