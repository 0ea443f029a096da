"""Pruning: unstructured, N:M, structured channel and attention-head pruning (``prune``)."""

from passes.prune.channels import ChannelGroup, ChannelPlan, apply_channels, plan_channels
from passes.prune.heads import AttentionUnit, apply_heads, find_attention

__all__ = ["ChannelGroup", "ChannelPlan", "apply_channels", "plan_channels", "AttentionUnit",
           "apply_heads", "find_attention"]
