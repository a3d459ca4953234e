"""The model architecture registry: ``model.arch`` names a factory registered here."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from ssr.config import ModelConfig

# model.arch -> a factory (config, number of classes) -> module. A new architecture registers
# itself with @register_architecture("name"); its forward takes (x, padding_mask) -> logits
# like SpatiotemporalTransformer's, and everything downstream (trainer, export, serving) works.
ModelFactory = Callable[[ModelConfig, int], nn.Module]
ARCHITECTURES: dict[str, ModelFactory] = {}


def register_architecture(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make ``factory`` the model built for ``model.arch: name``."""

    def add(factory: ModelFactory) -> ModelFactory:
        if name in ARCHITECTURES and ARCHITECTURES[name] is not factory:
            raise ValueError(f"model architecture {name!r} is registered twice")
        ARCHITECTURES[name] = factory
        return factory

    return add
