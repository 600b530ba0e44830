"""How good a policy is: greedy metrics on a split (policy), monitors of drift and input use (monitors), best-of-N
outputs (best_of_n).
"""
