"""rlvr"""
