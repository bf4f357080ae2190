"""Keras layers of PEPNet: Gate NU, EPNet, PPNet and per-domain heads."""

from pepnet_tf.layers.domain_heads import DomainHeads
from pepnet_tf.layers.epnet import EPNet
from pepnet_tf.layers.gate_nu import GateNU
from pepnet_tf.layers.ppnet import PPNet

__all__ = ["DomainHeads", "EPNet", "GateNU", "PPNet"]
