"""Rewards: the configured components and their total (components), sentence metrics (metrics), learned reward
models (reward_model), their losses on the one training loop (reward_objectives), `rest reward train`
(reward_training) and the seq2seq corrector (seq2seq_rm).
"""
