"""Pruning: unstructured, N:M and structured channel pruning (``prune``)."""

from passes.prune.channels import ChannelGroup, ChannelPlan, apply_channels, plan_channels

__all__ = ["ChannelGroup", "ChannelPlan", "apply_channels", "plan_channels"]
