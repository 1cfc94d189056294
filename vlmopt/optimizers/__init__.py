"""vlmopt.optimizers"""
