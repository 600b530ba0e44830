"""Rewards: the configured components and their total (components), sentence metrics (metrics), learned reward
models (reward_model) and the seq2seq corrector (seq2seq_rm).
"""
