"""Training of NIC patch encoders: data sources, augmentation, feeds and the generic loop."""
