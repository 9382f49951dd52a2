"""MM-Former (Mask Matching Transformer, Jiao et al., NeurIPS 2022): its parts, one module each, the paper's names.

* :mod:`.self_alignment`: Self-Alignment block (parameter-free channel gating, no residual).
* :mod:`.cross_alignment`: Cross-Alignment block (shared cross-attention + FFN layers, query -> support, then
  support -> the original query; memories with short side 15).
* :mod:`.feature_alignment`: Feature Alignment Block (both, over the backbone levels).
* :mod:`.mask_matching`: support prototype, proposal embeddings, the across-proposal matching MLP, blending; the
  heuristic baseline and the oracle; the Mask Matching (MM) module.
* :mod:`.potential_objects_segmenter`: a class-agnostic Mask2Former-style set predictor (POS) with Hungarian
  matching and its Dice + sigmoid-BCE mask losses.
* :mod:`.position_encoding`: the sine positional encoding.

Losses: :mod:`fss_lab.losses.mmformer`. Training-free proposal sources: :mod:`fss_lab.models.proposals`.
"""
from .cross_alignment import CrossAlignment, CrossAttentionLayer, FFNLayer, mask_support_features, memory_size
from .feature_alignment import FeatureAlignmentBlock
from .mask_matching import (
    MaskMatching,
    MatchingMLP,
    blend_proposals,
    heuristic_mask_matching,
    heuristic_matching,
    oracle_matching,
    proposal_embeddings,
    proposal_similarity,
    support_prototype,
)
from .potential_objects_segmenter import (
    PotentialObjectsSegmenter,
    SimplePixelDecoder,
    hungarian_matching,
    match_proposals,
    pos_set_loss,
)
from .position_encoding import SinePositionalEncoding, sine_positional_encoding
from .self_alignment import SelfAlignment, self_alignment, self_alignment_weights

__all__ = [
    "CrossAlignment", "CrossAttentionLayer", "FFNLayer", "FeatureAlignmentBlock", "MaskMatching", "MatchingMLP", "PotentialObjectsSegmenter", "SimplePixelDecoder",
    "SelfAlignment", "SinePositionalEncoding", "blend_proposals", "heuristic_mask_matching", "heuristic_matching", "hungarian_matching", "match_proposals", "pos_set_loss", "mask_support_features",
    "memory_size", "oracle_matching", "proposal_embeddings", "proposal_similarity", "self_alignment",
    "self_alignment_weights", "sine_positional_encoding", "support_prototype",
]
