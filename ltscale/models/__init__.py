from ltscale.models.registry import backbone_names, create_backbone

__all__ = ["backbone_names", "create_backbone"]
