"""vlmopt.datasets"""
