"""estep"""
