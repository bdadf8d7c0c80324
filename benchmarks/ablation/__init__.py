"""Granularity ablation: does each alignment term (instance, token, prototype) help?"""
