"""Write a diffusers SD 1.x, SD 2.x or SDXL pipeline as one checkpoint file in the original layout
(CompVis/A1111 for SD 1.x and 2.x, Stability's "SGM" for SDXL).

The inverse of diffusers' ``from_single_file`` conversion, for any depth of UNet/VAE (so the tiny test
models round-trip too): ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE), and the text
encoders: ``cond_stage_model.transformer.*`` (SD 1.x's CLIP), ``cond_stage_model.model.*`` (SD 2.x's
OpenCLIP ViT-H); for SDXL ``conditioner.embedders.0.transformer.*`` (CLIP ViT-L) and
``conditioner.embedders.1.model.*`` (OpenCLIP bigG). OpenCLIP weights take OpenCLIP's own names, the
attention projections fused into ``in_proj``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

_UNET_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)
_VAE_ATTENTION = (
    ("group_norm", "norm"),
    ("to_q", "q"),
    ("to_k", "k"),
    ("to_v", "v"),
    ("to_out.0", "proj_out"),
)


def _rename_resnet(rest: str, table: tuple[tuple[str, str], ...]) -> str:
    for new, old in table:
        if rest == new or rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def unet_key_map(config: Any) -> dict[str, str]:
    """diffusers UNet2DConditionModel prefix -> original ``openaimodel`` prefix, for ``config``."""
    layers = config["layers_per_block"]
    n = len(config["block_out_channels"])
    down_types = config["down_block_types"]
    up_types = config["up_block_types"]
    m = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
        "mid_block.resnets.0": "middle_block.0",
        "mid_block.attentions.0": "middle_block.1",
        "mid_block.resnets.1": "middle_block.2",
    }
    if config.get("addition_embed_type") == "text_time":  # SDXL's size/crop conditioning
        m["add_embedding.linear_1"] = "label_emb.0.0"
        m["add_embedding.linear_2"] = "label_emb.0.2"
    for i in range(n):
        for j in range(layers):
            m[f"down_blocks.{i}.resnets.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.0"
            if "CrossAttn" in down_types[i]:
                m[f"down_blocks.{i}.attentions.{j}"] = f"input_blocks.{(layers + 1) * i + j + 1}.1"
        if i < n - 1:
            m[f"down_blocks.{i}.downsamplers.0.conv"] = f"input_blocks.{(layers + 1) * (i + 1)}.0.op"
        has_attn = "CrossAttn" in up_types[i]
        for j in range(layers + 1):
            m[f"up_blocks.{i}.resnets.{j}"] = f"output_blocks.{(layers + 1) * i + j}.0"
            if has_attn:
                m[f"up_blocks.{i}.attentions.{j}"] = f"output_blocks.{(layers + 1) * i + j}.1"
        if i < n - 1:
            m[f"up_blocks.{i}.upsamplers.0.conv"] = (
                f"output_blocks.{(layers + 1) * i + layers}.{2 if has_attn else 1}.conv"
            )
    return m


def _map_prefix(key: str, table: dict[str, str]) -> tuple[str, str] | None:
    best = None
    for new in table:
        if (key == new or key.startswith(new + ".")) and (best is None or len(new) > len(best)):
            best = new
    if best is None:
        return None
    return table[best], key[len(best) + 1 :]


def unet_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    table = unet_key_map(config)
    out = {}
    for key, value in state.items():
        mapped = _map_prefix(key, table)
        if mapped is None:
            raise KeyError(f"no original-layout name for UNet key {key}")
        old, rest = mapped
        if ".resnets." in _find_new(key, table) or _find_new(key, table).startswith("mid_block.resnets"):
            rest = _rename_resnet(rest, _UNET_RESNET)
        out[f"model.diffusion_model.{old}.{rest}" if rest else f"model.diffusion_model.{old}"] = value
    return out


def _find_new(key: str, table: dict[str, str]) -> str:
    best = ""
    for new in table:
        if (key == new or key.startswith(new + ".")) and len(new) > len(best):
            best = new
    return best


def vae_to_original(state: dict[str, torch.Tensor], config: Any) -> dict[str, torch.Tensor]:
    n = len(config["block_out_channels"])
    table: dict[str, str] = {}
    for part in ("encoder", "decoder"):
        table[f"{part}.mid_block.resnets.0"] = f"{part}.mid.block_1"
        table[f"{part}.mid_block.resnets.1"] = f"{part}.mid.block_2"
        table[f"{part}.mid_block.attentions.0"] = f"{part}.mid.attn_1"
        table[f"{part}.conv_norm_out"] = f"{part}.norm_out"
    for i in range(n):
        for j in range(config["layers_per_block"] + 1):
            table[f"encoder.down_blocks.{i}.resnets.{j}"] = f"encoder.down.{i}.block.{j}"
            table[f"decoder.up_blocks.{i}.resnets.{j}"] = f"decoder.up.{n - 1 - i}.block.{j}"
        table[f"encoder.down_blocks.{i}.downsamplers.0.conv"] = f"encoder.down.{i}.downsample.conv"
        table[f"decoder.up_blocks.{i}.upsamplers.0.conv"] = f"decoder.up.{n - 1 - i}.upsample.conv"
    out = {}
    for key, value in state.items():
        mapped = _map_prefix(key, table)
        if mapped is None:
            name = key  # conv_in, conv_out, quant_conv, post_quant_conv: same names
        else:
            old, rest = mapped
            new = _find_new(key, table)
            if new.endswith("attentions.0"):
                rest = _rename_resnet(rest, _VAE_ATTENTION)
                if value.ndim == 2:  # linear -> 1x1 conv
                    value = value[:, :, None, None]
            elif ".resnets." in new:
                rest = _rename_resnet(rest, (("conv_shortcut", "nin_shortcut"),))
            name = f"{old}.{rest}"
        out[f"first_stage_model.{name}"] = value
    return out


def _clip_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Original checkpoints name the CLIP weights like transformers 4 did: "text_model." inside
    # (transformers >= 5.6 flattened CLIPTextModel, dropping that level).
    return {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}


_OPENCLIP_LAYER = (
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
)


def open_clip_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's state dict in OpenCLIP's names (what SDXL files hold under
    ``conditioner.embedders.1.model.``, SD 2.x files under ``cond_stage_model.model.``)."""
    sd = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    projection = sd.pop("text_projection.weight", None)  # SDXL's second encoder; SD 2.x's has none
    if projection is not None:
        out["text_projection"] = projection.T  # OpenCLIP multiplies x @ projection
    layers = sorted({int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers.")})
    for i in layers:
        src, dst = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            qkv = [sd.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
            for new, old in _OPENCLIP_LAYER:
                out[f"{dst}{old}.{kind}"] = sd.pop(f"{src}{new}.{kind}")
    sd.pop("embeddings.position_ids", None)
    if sd:
        raise KeyError(f"no OpenCLIP name for text encoder keys {sorted(sd)[:5]}")
    return out


def to_original_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder(s) weights under the original key names (SDXL's when the
    pipeline has a second text encoder)."""
    sd: dict[str, torch.Tensor] = {}
    sd.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    sd.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    text = _clip_keys(pipe.text_encoder.state_dict())
    if getattr(pipe, "text_encoder_2", None) is not None:
        sd.update({f"conditioner.embedders.0.transformer.{k}": v for k, v in text.items()})
        bigg = open_clip_to_original(pipe.text_encoder_2.state_dict())
        sd.update({f"conditioner.embedders.1.model.{k}": v for k, v in bigg.items()})
    elif pipe.unet.config.cross_attention_dim == 1024:  # SD 2.x: OpenCLIP ViT-H
        vith = open_clip_to_original(pipe.text_encoder.state_dict())
        sd.update({f"cond_stage_model.model.{k}": v for k, v in vith.items()})
    else:
        sd.update({f"cond_stage_model.transformer.{k}": v for k, v in text.items()})
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def save_single_file(pipe: Any, path: str | Path) -> Path:
    """Write ``pipe`` as one checkpoint: ``.safetensors``, or a pickled ``.ckpt`` (``{"state_dict": sd}``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = to_original_state_dict(pipe)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    else:
        torch.save({"state_dict": sd}, path)
    return path
