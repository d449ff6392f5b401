from ltscale.models.backbones import backbone_names, create_backbone

__all__ = ["backbone_names", "create_backbone"]
