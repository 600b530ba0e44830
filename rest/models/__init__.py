"""The policy and its plumbing: the Policy (policy), the decoding loop (sampling), checkpoints on disk (checkpoints),
tokenizers and padding (tokenizer).
"""
