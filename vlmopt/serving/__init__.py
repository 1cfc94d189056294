"""vlmopt.serving"""
