"""vlmopt.testing"""
