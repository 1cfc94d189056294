"""vlmopt.reports"""
