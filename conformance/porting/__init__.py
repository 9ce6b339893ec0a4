"""Porting real checkpoints: reference layouts (torchvision, timm, keras.applications) and file formats."""
