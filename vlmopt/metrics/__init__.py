"""vlmopt.metrics"""
