"""vlmopt.programs"""
