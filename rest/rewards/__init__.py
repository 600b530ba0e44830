"""Rewards: what the kinds of component know, asked in one place (kinds: checks, lineage), each component's Scorer
and their total (components, scorer), the kinds' own modules (parallel: the metrics; functions, remote, pretrained,
verifiers with sandbox, reward_model), Sparrow's rules (rules), the reward models' training (reward_objectives,
reward_training) and the seq2seq corrector (seq2seq_rm).
"""
