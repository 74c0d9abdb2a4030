"""SAM's mask decoder run on a batch of prompts of different lengths, padded and masked.

``segment_anything``'s decoder takes a batch of prompts only when all have the same number of
tokens. SAM-PT's prompts differ per object (visible points vary), so they are padded to the
longest and the padded tokens are excluded from every attention's softmax: each prompt's
output equals its own unpadded decoder call (tested), at one call per batch.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn


def _masked_attention(attention: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_valid: Optional[torch.Tensor]) -> torch.Tensor:
    """``segment_anything``'s ``Attention.forward`` with invalid keys excluded from the softmax."""
    q, k, v = attention.q_proj(q), attention.k_proj(k), attention.v_proj(v)
    heads = attention.num_heads
    b, nq, c = q.shape
    q = q.reshape(b, nq, heads, c // heads).transpose(1, 2)
    k = k.reshape(b, k.shape[1], heads, c // heads).transpose(1, 2)
    v = v.reshape(b, v.shape[1], heads, c // heads).transpose(1, 2)
    scores = q @ k.transpose(2, 3) / math.sqrt(c // heads)
    if key_valid is not None:
        scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    return attention.out_proj(out.transpose(1, 2).reshape(b, nq, c))


def _masked_two_way_transformer(transformer: nn.Module, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                                point_embedding: torch.Tensor, token_valid: Optional[torch.Tensor]
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayTransformer.forward`` where padded tokens are never attended to.

    Padded tokens only ever act as *keys* in the token self-attention and the image-to-token
    cross-attention, so masking those two keeps every valid token and image key equal to the
    unpadded computation.
    """
    keys = image_embedding.flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    queries, query_pe = point_embedding, point_embedding
    for layer in transformer.layers:
        if layer.skip_first_layer_pe:
            queries = _masked_attention(layer.self_attn, queries, queries, queries, token_valid)
        else:
            q = queries + query_pe
            queries = queries + _masked_attention(layer.self_attn, q, q, queries, token_valid)
        queries = layer.norm1(queries)
        q, k = queries + query_pe, keys + key_pe
        queries = layer.norm2(queries + _masked_attention(layer.cross_attn_token_to_image, q, k, keys, None))
        queries = layer.norm3(queries + layer.mlp(queries))
        q, k = queries + query_pe, keys + key_pe
        keys = layer.norm4(keys + _masked_attention(layer.cross_attn_image_to_token, k, q, queries, token_valid))
    q, k = queries + query_pe, keys + key_pe
    queries = transformer.norm_final_attn(
        queries + _masked_attention(transformer.final_attn_token_to_image, q, k, keys, None))
    return queries, keys


def masked_decode(decoder: nn.Module, image_embedding: torch.Tensor, image_pe: torch.Tensor,
                   sparse: torch.Tensor, token_valid: Optional[torch.Tensor], dense: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.predict_masks`` on padded prompts; returns the single-mask output.

    Returns ``(low_res_logits (B, 1, 4h, 4w), iou (B, 1))``.
    """
    batch = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(batch, -1, -1)
    tokens = torch.cat([output_tokens, sparse], dim=1)
    valid = None  # no padding: nothing to mask
    if token_valid is not None:
        valid = torch.cat([token_valid.new_ones(batch, output_tokens.shape[1]), token_valid], dim=1)
    src = image_embedding.expand(batch, -1, -1, -1) + dense
    pos_src = image_pe.expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = _masked_two_way_transformer(decoder.transformer, src, pos_src, tokens, valid)
    iou_token_out = hs[:, 0, :]
    mask_token_out = hs[:, 1, :]  # multimask_output=False keeps mask token 0 only
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper_in = decoder.output_hypernetworks_mlps[0](mask_token_out)
    b, c, h, w = upscaled.shape
    masks = (hyper_in[:, None, :] @ upscaled.reshape(b, c, h * w)).reshape(b, 1, h, w)
    iou = decoder.iou_prediction_head(iou_token_out)[:, :1]
    return masks, iou
