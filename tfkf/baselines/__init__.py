"""Baselines evaluated by tfkf.evaluate exactly as KuaiFormer is."""
